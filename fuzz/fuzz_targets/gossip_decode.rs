//! `Message::decode` on arbitrary bytes: never panics; whatever it accepts re-encodes to
//! bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_gossip::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let bytes = msg.encode();
        assert_eq!(bytes.len(), msg.encoded_len());
        let again = Message::decode(&bytes).expect("a re-encoded message decodes");
        assert_eq!(again, msg);
    }
});
