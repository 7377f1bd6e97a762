//! Small types shared by weft's crates, so that each is defined once: [`Mac`] (a MAC
//! address, written `02:0a:ff:00:00:01`) and the encapsulation overheads of the kernel
//! paths ([`overhead`]).

#![forbid(unsafe_code)]

mod mac;
pub use mac::{Mac, ParseMacError};

/// Bytes each kernel encapsulation adds in front of a pod's IPv4 packet on the underlay.
pub mod overhead {
    /// VXLAN over IPv4: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
    pub const VXLAN_OVERHEAD: u32 = 50;
    /// What ESP in transport mode (the AEAD of the encrypted fastpath) adds to a VXLAN
    /// datagram: SPI 4 + sequence 4 + IV 8 + padding and trailer up to 5 + ICV 16.
    pub const ESP_OVERHEAD: u32 = 37;
}
