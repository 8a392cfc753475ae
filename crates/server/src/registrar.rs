//! Group commit for registrations. Every registration is a write transaction, and with
//! `synchronous = FULL` each commit waits for the disk; claims that arrive while one commit is
//! under way share the next (one transaction, one sync), the way the queue writer batches
//! messages. Under a burst of sign-ups this turns thousands of commits into a few dozen; a lone
//! registration still commits at once.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::storage::{NewUser, RegisterError, Storage};

/// Claims committed together at most.
const MAX_BATCH: usize = 256;
/// Claims waiting for a commit at most; further registrations wait for room.
const INBOX: usize = 1024;

/// One registration waiting for its commit.
struct Claim {
    user: NewUser,
    answer: oneshot::Sender<Result<(), RegisterError>>,
}

/// The handle registrations go through.
#[derive(Debug, Clone)]
pub(crate) struct Registrar {
    inbox: mpsc::Sender<Claim>,
}

impl Registrar {
    /// Starts the task that commits claims against `storage`.
    pub(crate) fn start(storage: Arc<dyn Storage>) -> Self {
        let (inbox, claims) = mpsc::channel(INBOX);
        tokio::spawn(run(storage, claims));
        Self { inbox }
    }

    /// Claims `user`'s id; resolves once the claim is committed (or refused).
    pub(crate) async fn register(&self, user: NewUser) -> Result<(), RegisterError> {
        let (answer, answered) = oneshot::channel();
        if self.inbox.send(Claim { user, answer }).await.is_err() {
            return Err(RegisterError::Storage(stopped()));
        }
        answered.await.unwrap_or_else(|_| Err(RegisterError::Storage(stopped())))
    }
}

fn stopped() -> crate::storage::StorageError {
    crate::storage::StorageError::Database(sqlx::Error::PoolClosed)
}

async fn run(storage: Arc<dyn Storage>, mut claims: mpsc::Receiver<Claim>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while claims.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (users, answers): (Vec<NewUser>, Vec<_>) =
            batch.drain(..).map(|claim| (claim.user, claim.answer)).unzip();
        match storage.register_users(&users).await {
            Ok(claimed) => {
                for (answer, claimed) in answers.into_iter().zip(claimed) {
                    let _ = answer.send(if claimed { Ok(()) } else { Err(RegisterError::Taken) });
                }
            }
            // One claim must not fail the others: they are tried one by one, each with its own
            // answer (and its own error if the database is down).
            Err(_) if users.len() > 1 => {
                for (user, answer) in users.iter().zip(answers) {
                    let _ = answer.send(storage.register_user(user).await);
                }
            }
            Err(error) => {
                if let Some(answer) = answers.into_iter().next() {
                    let _ = answer.send(Err(RegisterError::Storage(error)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{StoredIdentity, StoredSignedPrekey};

    fn user(id: &str) -> NewUser {
        NewUser {
            user_id: id.to_owned(),
            identity: StoredIdentity {
                signing: format!("signing-{id}"),
                dh: format!("dh-{id}"),
                signature: format!("signature-{id}"),
            },
            signed_prekey: StoredSignedPrekey {
                id: 1,
                key: format!("spk-{id}"),
                created_at: 1,
                signature: format!("spk-signature-{id}"),
            },
            one_time_prekeys: Vec::new(),
            now: 1,
        }
    }

    #[tokio::test]
    async fn claims_made_together_commit_together_and_each_id_goes_once() {
        let storage = crate::storage::open("sqlite::memory:").await.unwrap();
        let registrar = Registrar::start(storage.clone());
        // 600 claims at once (more than one batch), every id claimed twice.
        let claims = (0..600).map(|n| {
            let registrar = registrar.clone();
            async move { (n % 300, registrar.register(user(&format!("user{}", n % 300))).await) }
        });
        let results = futures_util::future::join_all(claims).await;
        let mut won = [0usize; 300];
        for (id, result) in results {
            match result {
                Ok(()) => won[id] += 1,
                Err(RegisterError::Taken) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert!(won.iter().all(|&wins| wins == 1), "each id claimed exactly once: {won:?}");
        assert!(storage.identity("user299").await.unwrap().is_some());
        assert!(matches!(registrar.register(user("user0")).await, Err(RegisterError::Taken)));
    }
}
