//! Opaque, signed page tokens. A token names the snapshot revision of the listing, the last id
//! returned and a digest of the filter, and is signed with a secret every controller on the
//! database shares, so a token from one controller works on another and a forged or edited token
//! is refused rather than silently listing something else.

use super::ApiError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;
const SIGNATURE_LEN: usize = 16;
/// Longest token accepted. Hangar's own are about 150 characters; a longer one is not worth
/// decoding and hashing.
pub const MAX_PAGE_TOKEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCursor {
    /// Snapshot revision of the listing.
    #[serde(rename = "r")]
    pub revision: u64,
    /// Last id of the previous page.
    #[serde(rename = "a")]
    pub after: String,
    /// Digest of the request's filter; a token is only good for the filter it was issued for.
    #[serde(rename = "f")]
    pub filter_digest: String,
}

#[derive(Clone)]
pub struct PageTokens {
    key: Vec<u8>,
}

impl PageTokens {
    pub fn new(key: Vec<u8>) -> Self {
        PageTokens { key }
    }

    /// A digest of a request's filter, from its domain form: protobuf maps encode in no fixed
    /// order, so the wire bytes of the same filter can differ between calls.
    pub fn filter_digest(filter: &impl Serialize) -> String {
        let digest = Sha256::digest(serde_json::to_vec(filter).expect("filters serialize"));
        URL_SAFE_NO_PAD.encode(&digest[..12])
    }

    pub fn encode(&self, cursor: &PageCursor) -> String {
        let payload = serde_json::to_vec(cursor).expect("cursor serializes");
        let mut token = payload.clone();
        token.extend_from_slice(&self.sign(&payload));
        URL_SAFE_NO_PAD.encode(token)
    }

    pub fn decode(&self, token: &str, filter_digest: &str) -> Result<PageCursor, ApiError> {
        let malformed = || {
            ApiError::InvalidPageToken("malformed; pass next_page_token from the previous response unchanged".into())
        };
        if token.len() > MAX_PAGE_TOKEN {
            return Err(malformed());
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
        if bytes.len() <= SIGNATURE_LEN {
            return Err(malformed());
        }
        let (payload, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_truncated_left(signature).map_err(|_| {
            ApiError::InvalidPageToken(
                "signature does not match; the token was altered or not issued by this cluster".into(),
            )
        })?;
        let cursor: PageCursor = serde_json::from_slice(payload).map_err(|_| malformed())?;
        if cursor.filter_digest != filter_digest {
            return Err(ApiError::InvalidPageToken(
                "the token was issued for a different filter; keep the filter the same across pages".into(),
            ));
        }
        Ok(cursor)
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any size")
    }

    fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(payload);
        mac.finalize().into_bytes()[..SIGNATURE_LEN].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> PageCursor {
        PageCursor { revision: 42, after: "node-7".into(), filter_digest: "abc".into() }
    }

    #[test]
    fn a_token_round_trips_for_the_same_filter() {
        let tokens = PageTokens::new(b"secret".to_vec());
        assert_eq!(tokens.decode(&tokens.encode(&cursor()), "abc").unwrap(), cursor());
    }

    #[test]
    fn an_edited_token_is_refused() {
        let tokens = PageTokens::new(b"secret".to_vec());
        let mut bytes = URL_SAFE_NO_PAD.decode(tokens.encode(&cursor())).unwrap();
        bytes[5] ^= 1;
        let err = tokens.decode(&URL_SAFE_NO_PAD.encode(bytes), "abc").unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn a_token_from_another_cluster_is_refused() {
        let other = PageTokens::new(b"other".to_vec()).encode(&cursor());
        assert!(PageTokens::new(b"secret".to_vec()).decode(&other, "abc").is_err());
    }

    #[test]
    fn garbage_and_other_filters_are_refused() {
        let tokens = PageTokens::new(b"secret".to_vec());
        assert!(tokens.decode("not a token!", "abc").is_err());
        assert!(tokens.decode("", "abc").is_err());
        assert!(tokens.decode(&"A".repeat(MAX_PAGE_TOKEN + 1), "abc").is_err());
        let err = tokens.decode(&tokens.encode(&cursor()), "xyz").unwrap_err();
        assert!(err.to_string().contains("different filter"), "{err}");
    }
}
