//! A device with in-memory stores, for whole-conversation tests.

#![allow(dead_code)]

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sotto_protocol::prekeys::OneTimePrekey;
use sotto_protocol::record::MessageDigest;
use sotto_protocol::store::{
    self, IdentityChange, InMemoryIdentityStore, InMemoryPrekeyStore, InMemorySessionStore,
    SessionStore, StoreDecryptError,
};
use sotto_protocol::{
    DecryptError, Envelope, IdentityKeyPair, PrekeyBundle, Record, SessionRecord, SignedPrekey,
    UserId,
};

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub struct Device {
    pub user: UserId,
    pub identities: InMemoryIdentityStore,
    pub prekeys: InMemoryPrekeyStore,
    pub sessions: InMemorySessionStore,
    pub signed_prekey: SignedPrekey,
    pub one_time: Vec<OneTimePrekey>,
    pub sent: u64,
    pub last_received: (u64, MessageDigest),
}

impl Device {
    pub fn new(id: &str, rng: &mut ChaCha20Rng) -> Self {
        let user = UserId::parse(id).unwrap();
        let identity = IdentityKeyPair::generate(rng);
        let signed_prekey = SignedPrekey::generate(&identity, 1, 1_767_225_600, rng);
        let mut prekeys = InMemoryPrekeyStore::default();
        prekeys.add_signed_prekey(signed_prekey.clone());
        let one_time: Vec<OneTimePrekey> =
            (100..110).map(|id| OneTimePrekey::generate(id, rng)).collect();
        for opk in &one_time {
            prekeys.add_one_time_prekey(opk.clone());
        }
        Self {
            identities: InMemoryIdentityStore::new(user.clone(), identity),
            user,
            prekeys,
            sessions: InMemorySessionStore::default(),
            signed_prekey,
            one_time,
            sent: 0,
            last_received: (0, MessageDigest::NONE),
        }
    }

    pub fn identity(&self) -> &IdentityKeyPair {
        use sotto_protocol::store::IdentityStore;
        self.identities.local_identity()
    }

    /// A bundle as the relay would serve it, handing out one-time prekeys in order.
    pub fn bundle(&mut self) -> PrekeyBundle {
        let opk = if self.one_time.is_empty() { None } else { Some(self.one_time.remove(0)) };
        PrekeyBundle::new(
            self.user.clone(),
            *self.identity().public(),
            *self.signed_prekey.public(),
            opk.map(|k| k.public()),
        )
        .unwrap()
    }

    pub fn record(&mut self, text: &str) -> Record {
        self.sent += 1;
        Record::text(text, 1_000 * self.sent, self.sent, self.last_received.0, self.last_received.1)
    }

    pub fn send(&mut self, to: &mut Device, text: &str, rng: &mut ChaCha20Rng) -> Envelope {
        let record = self.record(text);
        let needs_bundle =
            !self.sessions.load_session(&to.user).unwrap().is_some_and(|r| r.can_encrypt());
        let bundle = needs_bundle.then(|| to.bundle());
        let (envelope, _) = store::encrypt(
            &mut self.identities,
            &mut self.sessions,
            &to.user,
            bundle.as_ref(),
            &record,
            rng,
        )
        .unwrap();
        // Every envelope goes through its JSON form, as on the wire.
        Envelope::from_json(&envelope.to_json()).unwrap()
    }

    pub fn receive(
        &mut self,
        from: &UserId,
        envelope: &Envelope,
        rng: &mut ChaCha20Rng,
    ) -> Result<(String, IdentityChange), DecryptError> {
        match store::decrypt(
            &mut self.identities,
            &mut self.prekeys,
            &mut self.sessions,
            from,
            envelope,
            rng,
        ) {
            Ok((decrypted, change)) => {
                self.last_received = (decrypted.record.counter, decrypted.digest);
                Ok((decrypted.record.as_text().unwrap_or_default().to_owned(), change))
            }
            Err(StoreDecryptError::Decrypt(error)) => Err(error),
            Err(StoreDecryptError::Store(error)) => panic!("store failed: {error}"),
        }
    }

    pub fn session_bytes(&self, peer: &UserId) -> Vec<u8> {
        self.sessions.load_session(peer).unwrap().map(|r| r.to_bytes().to_vec()).unwrap_or_default()
    }

    pub fn session_record(&self, peer: &UserId) -> SessionRecord {
        self.sessions.load_session(peer).unwrap().unwrap_or_default()
    }
}
