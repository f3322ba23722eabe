//! Page tokens: any string a client sends is decoded without a panic and refused unless this
//! cluster signed it for this filter; a token it did sign decodes to the cursor it was made from.

#![no_main]

use hangar_server::api::{PageCursor, PageTokens};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tokens = PageTokens::new(b"fuzz-page-token-secret".to_vec());
    let text = String::from_utf8_lossy(data);
    // Random bytes never forge a signature.
    assert!(tokens.decode(&text, "digest").is_err(), "accepted {text:?}");

    // A cursor made from the same bytes round-trips, and only for its own filter.
    let (revision, rest) = match data.split_first_chunk::<8>() {
        Some((revision, rest)) => (u64::from_le_bytes(*revision), rest),
        None => (0, data),
    };
    let cursor =
        PageCursor { revision, after: String::from_utf8_lossy(rest).into_owned(), filter_digest: "digest".into() };
    let token = tokens.encode(&cursor);
    if token.len() <= hangar_server::api::MAX_PAGE_TOKEN {
        assert_eq!(tokens.decode(&token, "digest").expect("its own token"), cursor);
    }
    assert!(tokens.decode(&token, "other").is_err(), "another filter's token");
});
