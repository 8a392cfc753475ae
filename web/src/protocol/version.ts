/** The numbers that travel in every bundle and envelope (PROTOCOL.md §1). */

/** The wire format version. */
export const PROTOCOL_VERSION = 1;

/**
 * The cipher suite: P-256 ECDH and ECDSA, HKDF-SHA256, HMAC-SHA256, AES-256-GCM, SHA-512 for
 * safety numbers.
 */
export const SUITE = 1;
