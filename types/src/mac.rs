//! MAC addresses.

use std::fmt;
use std::str::FromStr;

/// A 48-bit MAC address. Shown (and parsed) as six two-digit hex octets separated by colons,
/// lower case when shown, either case when parsed: the form `ip link`, the kernel's FDB and
/// the CNI results use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const ZERO: Mac = Mac([0; 6]);
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// The six octets.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Group bit set (multicast and broadcast).
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }

    /// An address one interface can own: neither group nor all-zero.
    pub fn is_unicast(self) -> bool {
        !self.is_multicast() && self != Mac::ZERO
    }
}

impl From<[u8; 6]> for Mac {
    fn from(octets: [u8; 6]) -> Self {
        Mac(octets)
    }
}

impl From<Mac> for [u8; 6] {
    fn from(mac: Mac) -> Self {
        mac.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Not six colon-separated two-digit hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (six two-digit hex octets separated by colons)")]
pub struct ParseMacError(pub String);

impl FromStr for Mac {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseMacError(s.chars().take(64).collect());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in mac.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_lower_case_and_parsed_back() {
        let m = Mac([0xae, 0x0a, 0xff, 0, 0, 0x01]);
        assert_eq!(m.to_string(), "ae:0a:ff:00:00:01");
        assert_eq!(format!("{m:?}"), "ae:0a:ff:00:00:01");
        assert_eq!("AE:0a:FF:00:00:01".parse::<Mac>(), Ok(m));
        assert_eq!(m.to_string().parse::<Mac>(), Ok(m));
    }

    #[test]
    fn anything_but_six_two_digit_octets_is_refused() {
        for bad in [
            "",
            "02:0a:ff:00:00",
            "02:0a:ff:00:00:01:02",
            "2:0a:ff:00:00:01",
            "zz:0a:ff:00:00:01",
            "+2:0a:ff:00:00:01",
            "02-0a-ff-00-00-01",
            "02:0a:ff:00:00:01:",
            "02:0a:ff:00:00:001",
        ] {
            let e = bad.parse::<Mac>().expect_err(bad);
            assert!(e.to_string().contains("is not a MAC address"), "{e}");
        }
    }

    #[test]
    fn unicast_is_neither_group_nor_zero() {
        assert!(Mac([2, 0, 0, 0, 0, 1]).is_unicast());
        assert!(!Mac([3, 0, 0, 0, 0, 1]).is_unicast());
        assert!(Mac([1, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!Mac::ZERO.is_unicast());
        assert!(Mac::BROADCAST.is_multicast() && !Mac::BROADCAST.is_unicast());
    }
}
