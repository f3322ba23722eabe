//! A Connect's spawn config, as bytes off the wire: decoding and validating it never panics,
//! a refusal stays a small status, and what a reader is shown of an accepted one never holds an
//! env value or the static token.

#![no_main]

use hangar::domain::SpawnConfig;
use hangar::secret::REDACTED;
use hangar::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = v1::SpawnConfig::decode(data) else { return };
    match SpawnConfig::from_proto(&wire, "spawn_config") {
        Err(violations) => {
            assert!(!violations.is_empty());
            let status = hangar::error::invalid_argument(violations);
            assert!(status.message().len() <= hangar::error::MESSAGE_MAX);
        }
        Ok(config) => {
            let shown = v1::SpawnConfig::from(&config);
            assert!(shown.static_token.is_empty(), "the static token is never shown");
            let env = &shown.executable.as_ref().expect("an accepted config has an executable").env;
            assert_eq!(env.len(), config.executable.env.len(), "every key is shown");
            assert!(env.values().all(|value| value == REDACTED), "no env value is shown");
            let spawned = config.executable.to_spawn_proto();
            assert_eq!(spawned.env.len(), config.executable.env.len());
            let debug = format!("{config:?}");
            if let Some(token) = &config.static_token {
                assert!(!debug.contains(token.as_str()), "Debug hides the static token");
            }
            // What the drone gets decodes back to the same executable.
            let again = v1::Executable::decode(spawned.encode_to_vec().as_slice()).expect("round trip");
            assert_eq!(again, spawned);
        }
    }
});
