//! Encoding and decoding user values, guarded: a `Serialize` or `Deserialize` implementation
//! that panics fails the value it was working on, never the thread it runs on.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sys::panic::catch;

/// Decodes one rmp-serde value; an error or a panic of its `Deserialize` becomes the message.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match catch(|| rmp_serde::from_slice(bytes)) {
        Ok(decoded) => decoded.map_err(|e| e.to_string()),
        Err(panic) => Err(format!("its Deserialize panicked: {}", panic.message)),
    }
}

/// Appends one rmp-serde value to `out`; an error or a panic of its `Serialize` becomes the
/// message, and `out` is left as it was.
pub(crate) fn encode(out: &mut Vec<u8>, value: &impl Serialize) -> Result<(), String> {
    let start = out.len();
    let encoded = match catch(|| rmp_serde::encode::write(out, value)) {
        Ok(encoded) => encoded.map_err(|e| e.to_string()),
        Err(panic) => Err(format!("its Serialize panicked: {}", panic.message)),
    };
    if encoded.is_err() {
        out.truncate(start);
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Explosive;

    impl Serialize for Explosive {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("no serializing this")
        }
    }

    impl<'de> serde::Deserialize<'de> for Explosive {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            panic!("no deserializing this")
        }
    }

    #[test]
    fn panicking_impls_become_errors() {
        let mut out = vec![1, 2];
        let err = encode(&mut out, &Explosive).unwrap_err();
        assert!(err.contains("no serializing this"), "{err}");
        assert_eq!(out, [1, 2]);
        let err = decode::<Explosive>(&[0xc0]).err().unwrap();
        assert!(err.contains("no deserializing this"), "{err}");
        assert_eq!(decode::<u8>(&[7]).unwrap(), 7);
    }
}
