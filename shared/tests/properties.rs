//! Property tests (a bounded fuzz run in every `cargo xtask test`) of the two decoders
//! that take bytes straight from clients: the wire's client frame decoder and the
//! connection/session token verifier. Arbitrary input must give an error, never a panic;
//! a token changed in any byte must never verify.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use relaydesk_shared::token::{generate_keypair, Claims, Role, TokenSigner, TokenVerifier};
use relaydesk_shared::wire::ClientFrame;
use uuid::Uuid;

/// Pieces of JSON that client frames are made of, so that generated input reaches the
/// decoder's later checks and not only its first syntax error.
fn json_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(r#"{"t":"send","#.to_string()),
        Just(r#"{"t":"sub","conv":"#.to_string()),
        Just(r#"{"t":"hello","token":"#.to_string()),
        Just(r#""id":"c1","#.to_string()),
        Just(r#""conv":"00000000-0000-4000-8000-000000000001","#.to_string()),
        Just(r#""body":{"text":"#.to_string()),
        Just(r#""after":18446744073709551615"#.to_string()),
        Just(r#""\u0000""#.to_string()),
        Just(r#""\ud800""#.to_string()),
        Just(r#""\udc00\ud800""#.to_string()),
        Just("}".to_string()),
        Just("]".to_string()),
        Just("[".to_string()),
        Just(",".to_string()),
        Just("-1e999".to_string()),
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn client_frames_from_arbitrary_bytes_never_panic(
        bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..256), json_like()],
    ) {
        if let Ok(frame) = ClientFrame::decode(&bytes) {
            // Whatever decodes is valid JSON without NUL or lone surrogates.
            let text = std::str::from_utf8(&bytes);
            prop_assert!(text.is_ok());
            let _ = frame;
        }
    }

    #[test]
    fn arbitrary_strings_never_verify(token in any::<String>()) {
        let (_, public) = keys();
        let verifier = TokenVerifier::from_pem(public.as_bytes(), "edge").unwrap();
        prop_assert!(verifier.verify(&token).is_err());
    }
}

fn keys() -> (String, String) {
    static KEYS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| generate_keypair().unwrap()).clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn a_token_changed_in_any_byte_never_verifies(at in any::<prop::sample::Index>(), to in any::<u8>()) {
        let (private, public) = keys();
        let signer = TokenSigner::from_pem(private.as_bytes()).unwrap();
        let verifier = TokenVerifier::from_pem(public.as_bytes(), "edge").unwrap();
        let claims = Claims::new(Uuid::new_v4(), Uuid::new_v4(), Role::Agent, "edge", 60);
        let token = signer.sign(&claims).unwrap();
        prop_assert!(verifier.verify(&token).is_ok());
        let mut bytes = token.into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != to);
        bytes[i] = to;
        // Base64url has a few encodings of the same final bits; a changed token that
        // decodes to the very same bytes is the same token.
        if let Ok(changed) = String::from_utf8(bytes) {
            if let Ok(c) = verifier.verify(&changed) {
                prop_assert_eq!(c.sub, claims.sub);
                prop_assert_eq!(c.tid, claims.tid);
            }
        }
    }
}
