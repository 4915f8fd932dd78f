//! The application's secret, the tokens and keys derived from it, and the binary's identity.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{ClusterError, Result};

/// The metadata entry every call carries.
pub(crate) const AUTH_HEADER: &str = "x-ember-auth";

/// An application's shared secret: 32 random bytes.
#[derive(Clone)]
pub(crate) struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A fresh secret from the operating system's random source.
    pub(crate) fn generate() -> Result<Secret> {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        let path = "/dev/urandom";
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|source| ClusterError::Io { path: path.into(), source })?;
        Ok(Secret(bytes))
    }

    /// The secret as hex, to hand to a process the driver starts.
    pub(crate) fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses [`to_hex`](Self::to_hex)'s form.
    pub(crate) fn from_hex(text: &str) -> Result<Secret> {
        let bad = || ClusterError::Environment("the authentication secret is not 64 hex digits".into());
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Secret(bytes))
    }

    /// The token a peer presents on every call: derived from the secret, which itself never
    /// travels.
    pub(crate) fn token(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"ember-auth-v1\0");
        h.update(self.0);
        hex(&h.finalize())
    }

    /// The key task bodies are sealed with: only a process that holds the secret and runs the
    /// executable whose SHA-256 is `binary` derives it.
    pub(crate) fn ship_key(&self, binary: &[u8; 32]) -> ember_core::ship::ShipKey {
        let mut h = Sha256::new();
        h.update(b"ember-ship-v1\0");
        h.update(self.0);
        h.update(binary);
        let digest = h.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        // SAFETY: every holder of the application's secret is trusted: the driver, and the
        // executors it started itself (which get the secret through their environment and
        // remove it from there at once). Within that domain, the key also binds the
        // executable's hash, so an executor of another build derives another key and cannot
        // decode the driver's tasks (the driver also refuses it when it registers). Sealed bytes
        // flow one way only: the driver seals task bodies and an executor decodes them from its
        // own authenticated session with its driver; the driver never decodes sealed bytes from
        // executors (statuses and results are plain data). So every code reference decoded with
        // this key was sealed by the driver, running this very binary.
        unsafe { ember_core::ship::ShipKey::for_verified_peers(key) }
    }
}

/// Whether `presented` is the expected token, compared in time independent of where they differ.
pub(crate) fn token_matches(expected: &str, presented: &[u8]) -> bool {
    let expected = expected.as_bytes();
    if expected.len() != presented.len() {
        return false;
    }
    expected.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The executable this process runs: the image itself (`/proc/self/exe`), not a path that may
/// name another file by now.
pub(crate) const SELF_EXE: &str = "/proc/self/exe";

/// SHA-256 of this process's executable (computed once, from the running image).
pub(crate) fn binary_sha256() -> Result<&'static [u8; 32]> {
    static HASH: OnceLock<std::result::Result<[u8; 32], String>> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut file = std::fs::File::open(SELF_EXE).map_err(|e| format!("{SELF_EXE}: {e}"))?;
        let mut h = Sha256::new();
        std::io::copy(&mut file, &mut h).map_err(|e| format!("{SELF_EXE}: {e}"))?;
        Ok(h.finalize().into())
    })
    .as_ref()
    .map_err(|m| ClusterError::Io { path: "the executable".into(), source: std::io::Error::other(m.clone()) })
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_through_hex_and_bad_hex_is_refused() {
        let s = Secret::generate().unwrap();
        assert_eq!(Secret::from_hex(&s.to_hex()).unwrap().0, s.0);
        assert!(Secret::from_hex("zz").is_err());
        assert!(Secret::from_hex(&"a".repeat(62)).is_err(), "too short");
        assert!(Secret::from_hex(&"a".repeat(66)).is_err(), "too long");
        assert!(Secret::from_hex(&"g".repeat(64)).is_err());
        assert!(Secret::from_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn tokens_and_keys_differ_with_the_secret_and_the_binary() {
        let (a, b) = (Secret::generate().unwrap(), Secret::generate().unwrap());
        assert_ne!(a.token(), b.token());
        assert!(token_matches(&a.token(), a.token().as_bytes()));
        assert!(!token_matches(&a.token(), b.token().as_bytes()));
        assert!(!token_matches(&a.token(), &a.token().as_bytes()[1..]));
        let value = 42u64;
        let sealed = a.ship_key(&[1; 32]).encode(&value).unwrap();
        assert_eq!(a.ship_key(&[1; 32]).decode::<u64>(&sealed).unwrap(), 42);
        assert!(a.ship_key(&[2; 32]).decode::<u64>(&sealed).is_err(), "another binary's key");
        assert!(b.ship_key(&[1; 32]).decode::<u64>(&sealed).is_err(), "another application's key");
    }
}
