//! The identity a Connect asserts (its key, `user` and `auth` claims), as bytes off the wire:
//! validating it never panics, and whatever passes is a valid HTTP header, as the proxy will
//! send it (`x-verified-user`, `x-verified-<name>`).

#![no_main]

use hangar::domain::{BackendKey, identity_violations};
use hangar::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = v1::ConnectRequest::decode(data) else { return };
    if let Some(key) = &request.key {
        let _ = BackendKey::from(key).violations("key");
    }
    if !identity_violations(&request.user, &request.auth).is_empty() {
        return;
    }
    assert!(http::HeaderValue::from_str(&request.user).is_ok(), "user {:?}", request.user);
    for (name, value) in &request.auth {
        let header = format!("x-verified-{name}");
        assert!(http::HeaderName::from_bytes(header.as_bytes()).is_ok(), "claim name {name:?}");
        assert_ne!(header, "x-verified-user", "a claim cannot pose as the user");
        assert!(http::HeaderValue::from_str(value).is_ok(), "claim value {value:?}");
    }
});
