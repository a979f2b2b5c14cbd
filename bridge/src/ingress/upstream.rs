//! A device's loopback connection to rumqttd, its relay. A client with no will and a
//! client id of its own, the only connection of that id, whose session rumqttd holds
//! nothing of (`sessions` decides: a clean one, or a persistent one never relayed) needs
//! none while it only publishes what nobody subscribes to, so its relay is opened at the
//! first packet rumqttd must see: until then the device costs one socket instead of three,
//! and rumqttd no connection state.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use metrics::gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A relay rumqttd has not accepted by then is given up (and the connection with it).
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

type Opening = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

pub(super) struct Upstream {
    addr: SocketAddr,
    /// What rumqttd gets first on the relay.
    connect: Bytes,
    /// Fields apart so that `conn` can wait on each at once.
    pub opening: Option<Opening>,
    pub rd: Option<OwnedReadHalf>,
    pub wr: Option<OwnedWriteHalf>,
    /// Opened after the device had Sluice's own CONNACK: rumqttd's, still to come, is not
    /// the device's.
    pub connack_owed: bool,
}

impl Upstream {
    /// The relay, opened now: rumqttd's CONNACK is the device's.
    pub async fn open(addr: SocketAddr, connect: Bytes) -> io::Result<Upstream> {
        let stream = connect_relay(addr, connect.clone()).await?;
        let mut up = Upstream::unopened(addr, connect);
        up.attach(stream);
        up.connack_owed = false;
        Ok(up)
    }

    /// Opened by `start` once rumqttd must see something.
    pub fn unopened(addr: SocketAddr, connect: Bytes) -> Upstream {
        Upstream {
            addr,
            connect,
            opening: None,
            rd: None,
            wr: None,
            connack_owed: false,
        }
    }

    /// Open or on its way: what is queued for rumqttd will reach it.
    pub fn is_wanted(&self) -> bool {
        self.wr.is_some() || self.opening.is_some()
    }

    /// It was opened: rumqttd may hold something of the session since.
    pub fn relayed(&self) -> bool {
        self.wr.is_some()
    }

    /// On its way: what depends on rumqttd having a publish waits.
    pub fn is_opening(&self) -> bool {
        self.opening.is_some()
    }

    /// Starts opening the relay, unless it is open or opening.
    pub fn start(&mut self) {
        if !self.is_wanted() {
            let opening = connect_relay(self.addr, self.connect.clone());
            self.opening = Some(Box::pin(async move {
                tokio::time::timeout(OPEN_TIMEOUT, opening)
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
            }));
        }
    }

    pub fn attach(&mut self, stream: TcpStream) {
        let (rd, wr) = stream.into_split();
        self.rd = Some(rd);
        self.wr = Some(wr);
        self.connack_owed = true;
        gauge!("sluice_broker_relays").increment(1.0);
    }

    /// Ends the relay: writes what is left of `buf` (opening the relay first if it is on
    /// its way), closes it for writing and waits until rumqttd closes it too. Closing
    /// with rumqttd's answers unread would reset the connection and could lose what rumqttd
    /// had not read yet.
    pub async fn close(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.opening.is_some() {
            let stream = opened(&mut self.opening).await?;
            self.attach(stream);
        }
        let (Some(rd), Some(wr)) = (self.rd.as_mut(), self.wr.as_mut()) else {
            return Ok(());
        };
        wr.write_all(buf).await?;
        wr.shutdown().await?;
        let mut sink = [0u8; 1024];
        while rd.read(&mut sink).await? > 0 {}
        Ok(())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if self.wr.is_some() {
            gauge!("sluice_broker_relays").decrement(1.0);
        }
    }
}

/// The relay `Upstream::start` began, once open (pending while none is opening); then
/// `attach` it.
pub async fn opened(opening: &mut Option<Opening>) -> io::Result<TcpStream> {
    let Some(pending) = opening.as_mut() else {
        return std::future::pending().await;
    };
    let stream = pending.as_mut().await;
    *opening = None;
    stream
}

/// Reads what rumqttd sent (pending while the relay is not open).
pub async fn read(rd: &mut Option<OwnedReadHalf>, buf: &mut BytesMut) -> io::Result<usize> {
    match rd.as_mut() {
        Some(rd) => rd.read_buf(buf).await,
        None => std::future::pending().await,
    }
}

/// Writes what waits for rumqttd (pending while the relay is not open).
pub async fn write(wr: &mut Option<OwnedWriteHalf>, buf: &mut BytesMut) -> io::Result<usize> {
    match wr.as_mut() {
        Some(wr) => wr.write_buf(buf).await,
        None => std::future::pending().await,
    }
}

async fn connect_relay(addr: SocketAddr, connect: Bytes) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&connect).await?;
    Ok(stream)
}
