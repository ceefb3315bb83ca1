//! TEMPORARY single-seed stand-in (not committed): lets the shell compile until the openraft
//! control plane lands.
use super::control::{ControlCommand, ControlResponse, ControlState};
use futures::future::BoxFuture;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub trait RaftTransport: Send + Sync + 'static {
    fn call(
        &self,
        target: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("not the leader")]
    NotLeader { leader: Option<String> },
    #[error("raft: {0}")]
    Raft(String),
}

pub struct ControlPlane {
    me: String,
    state: Mutex<ControlState>,
    tx: watch::Sender<Arc<ControlState>>,
}

impl ControlPlane {
    pub async fn start(
        _d: &Path,
        me: &str,
        _s: &[String],
        _t: Arc<dyn RaftTransport>,
    ) -> Result<Self, ControlError> {
        Ok(Self {
            me: me.into(),
            state: Mutex::default(),
            tx: watch::channel(Arc::default()).0,
        })
    }
    pub async fn initialize_if_first(&self) -> Result<(), ControlError> {
        Ok(())
    }
    pub fn state(&self) -> Arc<ControlState> {
        self.tx.borrow().clone()
    }
    pub fn subscribe(&self) -> watch::Receiver<Arc<ControlState>> {
        self.tx.subscribe()
    }
    pub async fn propose(&self, cmd: ControlCommand) -> Result<ControlResponse, ControlError> {
        let mut s = self.state.lock().unwrap();
        let r = s.apply(&cmd);
        self.tx.send_replace(Arc::new(s.clone()));
        Ok(r)
    }
    pub async fn is_leader(&self) -> bool {
        true
    }
    pub fn leader(&self) -> Option<String> {
        Some(self.me.clone())
    }
    pub fn term(&self) -> u64 {
        1
    }
    pub fn commit_index(&self) -> u64 {
        self.state.lock().unwrap().version
    }
    pub async fn handle_rpc(&self, _p: &[u8]) -> Vec<u8> {
        Vec::new()
    }
}
