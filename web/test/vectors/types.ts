/**
 * The shapes of the shared test vector files (test-vectors/*.json, made by the Rust core's
 * `vectors.rs`). Binary values are lower-case hex unless a field name ends in `B64` or `Json`.
 */

import type { EcPrivateJwk } from '../../src/protocol/keys.js';

export interface KeyVector {
  readonly private: string;
  readonly public: string;
  readonly publicB64: string;
  readonly jwk: EcPrivateJwk;
}

export interface KeysFile {
  readonly valid: readonly (KeyVector & { readonly name: string })[];
  readonly invalid: readonly { readonly name: string; readonly public: string; readonly error: string }[];
}

export interface EcdhFile {
  readonly cases: readonly {
    readonly name: string;
    readonly private: KeyVector;
    readonly peerPublic: string;
    readonly shared: string;
  }[];
  readonly invalid: readonly {
    readonly name: string;
    readonly private: KeyVector;
    readonly peerPublic: string;
    readonly error: string;
  }[];
}

export interface IdentityVector {
  readonly signing: KeyVector;
  readonly dh: KeyVector;
  readonly bindingSignature: string;
}

export interface SignaturesFile {
  readonly signer: IdentityVector;
  readonly cases: readonly {
    readonly name: string;
    readonly kind: 'identityBinding' | 'signedPrekey' | 'authentication';
    readonly inputs: {
      readonly dhPublic?: string;
      readonly id?: number;
      readonly createdAt?: number;
      readonly keyPublic?: string;
      readonly host?: string;
      readonly userId?: string;
      readonly nonce?: string;
    };
    readonly message: string;
    readonly signature: string;
    readonly valid: boolean;
  }[];
}

export interface KdfFile {
  readonly rootChain: readonly {
    readonly rootKey: string;
    readonly dhOutput: string;
    readonly nextRootKey: string;
    readonly chainKey: string;
  }[];
  readonly chainKey: readonly { readonly chainKey: string; readonly messageKey: string; readonly nextChainKey: string }[];
  readonly messageKeys: readonly { readonly messageKey: string; readonly aesKey: string; readonly nonce: string }[];
}

export interface PartyVector {
  readonly userId: string;
  readonly identity: IdentityVector;
  readonly signedPrekey: { readonly id: number; readonly createdAt: number; readonly key: KeyVector; readonly signature: string };
  readonly oneTimePrekey: { readonly id: number; readonly key: KeyVector };
}

export interface X3dhFile {
  readonly cases: readonly {
    readonly name: string;
    readonly alice: PartyVector;
    readonly bob: PartyVector;
    readonly ephemeral: KeyVector;
    readonly bundleJson: string;
    readonly dh: { readonly dh1: string; readonly dh2: string; readonly dh3: string; readonly dh4?: string };
    readonly ikm: string;
    readonly sharedSecret: string;
    readonly associatedData: string;
  }[];
}

export interface AeadFile {
  readonly cases: readonly {
    readonly name: string;
    readonly messageKey: string;
    readonly aesKey: string;
    readonly nonce: string;
    readonly associatedData: string;
    readonly header: { readonly dhB64: string; readonly pn: number; readonly n: number };
    readonly headerBytes: string;
    readonly aad: string;
    readonly plaintext: string;
    readonly ciphertext: string;
  }[];
}

export interface RecordVector {
  readonly sentAt: number;
  readonly counter: number;
  readonly lastReceivedCounter: number;
  readonly lastReceivedDigest: string;
  readonly kind: 'text' | 'receipt' | 'unsupported';
  readonly text?: string;
  readonly receipt?: { readonly type: 'delivered' | 'read'; readonly counters: readonly number[] };
  readonly kindByte?: number;
}

export interface RecordsFile {
  readonly valid: readonly {
    readonly name: string;
    readonly record: RecordVector;
    readonly encoded: string;
    readonly padded: string;
    readonly digest: string;
  }[];
  readonly unsupported: readonly { readonly name: string; readonly padded: string; readonly record: RecordVector }[];
  readonly invalid: readonly { readonly name: string; readonly padded: string; readonly error: string }[];
}

export interface WireFile {
  readonly bundles: readonly {
    readonly name: string;
    readonly json: string;
    readonly userId: string;
    readonly signedPrekeyId: number;
    readonly oneTimePrekeyId: number | null;
  }[];
  readonly envelopes: readonly {
    readonly name: string;
    readonly json: string;
    readonly header: { readonly dh: string; readonly pn: number; readonly n: number };
    readonly isPrekeyMessage: boolean;
    readonly ciphertextLength: number;
  }[];
  readonly invalid: readonly {
    readonly kind: 'envelope' | 'bundle';
    readonly name: string;
    readonly json: string;
    readonly error: string;
  }[];
}

export interface RatchetMessage {
  readonly index: number;
  readonly from: 'alice' | 'bob';
  readonly record: RecordVector;
  readonly encodedRecord: string;
  readonly paddedRecord: string;
  readonly digest: string;
  readonly header: { readonly dh: string; readonly pn: number; readonly n: number };
  readonly headerBytes: string;
  readonly messageKey: string | null;
  readonly aesKey: string | null;
  readonly nonce: string | null;
  readonly envelopeJson: string;
}

export type RatchetStep =
  | { readonly op: 'send'; readonly message: number }
  | {
      readonly op: 'deliver' | 'deliverTampered';
      readonly message: number;
      readonly to: 'alice' | 'bob';
      readonly result: string;
      readonly text?: string | null;
      readonly tamperedEnvelopeJson?: string;
    };

export interface RatchetFile {
  readonly alice: PartyVector;
  readonly bob: PartyVector;
  readonly bundleJson: string;
  readonly ephemeral: KeyVector;
  readonly associatedData: string;
  readonly aliceRatchetKeys: readonly KeyVector[];
  readonly bobRatchetKeys: readonly KeyVector[];
  readonly messages: readonly RatchetMessage[];
  readonly steps: readonly RatchetStep[];
}

export interface SafetyNumberFile {
  readonly cases: readonly {
    readonly userA: string;
    readonly identityA: { readonly signing: string; readonly dh: string };
    readonly userB: string;
    readonly identityB: { readonly signing: string; readonly dh: string };
    readonly fingerprintA: string;
    readonly fingerprintB: string;
    readonly digitsA: string;
    readonly digitsB: string;
    readonly safetyNumber: string;
    readonly grouped: string;
    readonly qr: string;
    readonly qrB64: string;
  }[];
}
