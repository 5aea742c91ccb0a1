//! Test fixtures for every crate that tests DNS behaviour (cargo feature `testing`; enable it
//! in `[dev-dependencies]`): an in-process authoritative server ([`TestDnsServer`]), an
//! HTTPS server for MTA-STS policy files ([`TestHttpsServer`]), and a DNSSEC world of signed
//! zones served by NSD and validated by unbound ([`DnssecWorld`]) for DANE tests.

mod dnssec;
mod https;
mod server;

pub use dnssec::{DnssecWorld, DnssecWorldBuilder, ZoneKind};

pub use https::{CannedResponse, TestHttpsServer, request_complete};
pub use server::{Fault, TestDnsServer, TestServerError};

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Locks a mutex, also when a panicking test thread poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a server body says it is serving (or why it cannot).
pub(crate) struct Ready(std::sync::mpsc::Sender<Result<(), String>>);

impl Ready {
    pub(crate) fn serving(&self) {
        let _ = self.0.send(Ok(()));
    }

    pub(crate) fn failed(&self, why: String) {
        let _ = self.0.send(Err(why));
    }
}

/// A test server running on its own thread with its own current-thread tokio runtime, so it
/// serves synchronous tests, tokio tests of any flavour and child processes alike. Dropping
/// it tells the server to stop and joins the thread.
pub(crate) struct ServerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `serve(ready, stopped)` on a new thread and returns once it called
    /// `ready.serving()`; `stopped` completes when the `ServerThread` is dropped.
    pub(crate) fn spawn<F, Fut>(name: String, serve: F) -> Result<ServerThread, TestServerError>
    where
        F: FnOnce(Ready, tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread_name = name.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let ready = Ready(ready_tx);
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(serve(ready, stopped)),
                    Err(e) => ready.failed(format!("test server runtime: {e}")),
                }
            })
            .map_err(|e| TestServerError(format!("cannot start thread {thread_name}: {e}")))?;
        let mut server = ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(server),
            Ok(Err(why)) => Err(TestServerError(why)),
            Err(_) => {
                server.stop.take();
                Err(TestServerError(format!(
                    "{thread_name} ended before serving"
                )))
            }
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
