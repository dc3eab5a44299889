//! Accepting clients: the Unix-socket handshake that creates a client's region and hands it,
//! with the doorbell and the client's wake eventfd, to the client and (as a [`Session`]) to the service loop.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use crossbeam_channel::Sender;

use qnet_client::attach::{Hello, Welcome};
use qnet_client::sys::{eventfd, eventfd_signal, memfd, send_with_fds, Mapping};
use qnet_ring::{Geometry, RegionView, MAGIC, VERSION};

use crate::session::Session;

/// Creates sessions for new clients and passes them to the service loop.
pub struct Attacher {
    geometry: Geometry,
    doorbell: Arc<OwnedFd>,
    sessions: Sender<Session>,
    next_id: AtomicU64,
}

impl Attacher {
    pub(crate) fn new(
        geometry: Geometry,
        doorbell: Arc<OwnedFd>,
        sessions: Sender<Session>,
    ) -> Self {
        Attacher {
            geometry,
            doorbell,
            sessions,
            next_id: AtomicU64::new(1),
        }
    }

    /// Runs the handshake on one connection.
    pub fn attach(&self, mut stream: UnixStream) -> anyhow::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut hello = [0u8; Hello::LEN];
        stream.read_exact(&mut hello).context("reading hello")?;
        let hello = Hello::decode(&hello);
        if hello.magic != MAGIC || hello.version != VERSION {
            let refuse = Welcome {
                magic: MAGIC,
                version: VERSION,
                region_size: 0,
            };
            let _ = stream.write_all(&refuse.encode());
            bail!(
                "client speaks ring version {} (magic {:#x}); this stack speaks {VERSION}",
                hello.version,
                hello.magic
            );
        }
        let size = self.geometry.region_size;
        let fd = memfd("qnet-ring", size).context("creating the ring memfd")?;
        let mapping = Mapping::map_shared(&fd, size as usize).context("mapping the ring")?;
        // SAFETY: the mapping is page aligned, `size` bytes long, and is moved into the Session
        // together with the view, which is dropped first.
        let view = unsafe { RegionView::new(mapping.as_ptr(), mapping.len(), self.geometry) }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        view.publish_geometry();
        let welcome = Welcome {
            magic: MAGIC,
            version: VERSION,
            region_size: size,
        };
        let client_wake = eventfd().context("creating the client wake eventfd")?;
        send_with_fds(
            &stream,
            &welcome.encode(),
            &[
                fd.as_raw_fd(),
                self.doorbell.as_raw_fd(),
                client_wake.as_raw_fd(),
            ],
        )
        .context("sending the ring")?;
        stream.set_read_timeout(None)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Session::new(id, view, mapping, stream, client_wake).with_memory(fd);
        self.sessions
            .send(session)
            .map_err(|_| anyhow::anyhow!("the stack has stopped"))?;
        eventfd_signal(self.doorbell.as_raw_fd());
        tracing::debug!(session = id, "client attached");
        Ok(())
    }

    /// Serves attach requests on `listener` until it fails.
    pub fn serve(self: Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming() {
            match stream {
                Ok(s) => {
                    // A thread each, so a client that never says hello delays nobody else.
                    let me = self.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = me.attach(s) {
                            tracing::warn!("attach failed: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    tracing::error!("accepting ring clients: {e}");
                    return;
                }
            }
        }
    }
}
