//! The data plane on an executor: serving the segments of its map outputs, fetching other
//! executors' segments, and the mirror of the driver's map output tracker that tells reducers
//! where outputs are.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use ember_core::env::Env;
use ember_core::scheduler::MapOutputTracker;
use ember_core::shuffle::{
    MapLocations, MapOutputLocations, MapStatus, MemorySegment, ReduceBlock, RemoteSegments, ShuffleId,
};
use ember_core::Error;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::proto;

/// Largest piece of a segment in one message.
const PIECE_BYTES: usize = 1 << 20;

/// Data-plane addresses of executors, by id (learned from the driver).
pub(crate) type Addresses = Arc<RwLock<HashMap<String, String>>>;

/// Adds the application's token to every call.
#[derive(Clone)]
pub(crate) struct Auth(pub(crate) Option<MetadataValue<Ascii>>);

impl Auth {
    /// Presents the token of `secret` (nothing when there is none).
    pub(crate) fn new(secret: Option<&auth::Secret>) -> crate::Result<Auth> {
        match secret {
            None => Ok(Auth(None)),
            Some(s) => {
                let token =
                    s.token().parse().map_err(|_| crate::ClusterError::Protocol("token is not ASCII".into()))?;
                Ok(Auth(Some(token)))
            }
        }
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(auth::AUTH_HEADER, token.clone());
        }
        Ok(request)
    }
}

type AuthChannel = tonic::service::interceptor::InterceptedService<Channel, Auth>;

/// Serves this executor's segments.
pub(crate) struct BlockService {
    /// Set once the executor has started (requests before that are refused as unavailable).
    pub(crate) env: Arc<OnceLock<Arc<Env>>>,
    /// Takes the map outputs other executors announce (with a small output's segments).
    pub(crate) notices: Arc<OnceLock<Arc<dyn Fn(MapStatus, Vec<(Vec<u8>, bool)>) + Send + Sync>>>,
    /// Tells the driver about cached partitions gained (a replica kept here).
    pub(crate) blocks_changed: Arc<OnceLock<Arc<dyn Fn() + Send + Sync>>>,
}

impl BlockService {
    /// The executor's services and the block partition `split` of rdd `rdd` a request names.
    fn block(
        &self,
        rdd: u64,
        split: u64,
    ) -> std::result::Result<(Arc<Env>, ember_core::storage::RddId, usize), Status> {
        let env = self.env.get().cloned().ok_or_else(|| Status::unavailable("the executor is starting"))?;
        let split = usize::try_from(split).map_err(|_| Status::invalid_argument("split out of range"))?;
        Ok((env, ember_core::storage::RddId(rdd), split))
    }
}

type ChunkStream = Pin<Box<dyn tokio_stream::Stream<Item = std::result::Result<proto::SegmentChunk, Status>> + Send>>;

#[tonic::async_trait]
impl proto::block_transfer_server::BlockTransfer for BlockService {
    type FetchSegmentsStream = ChunkStream;

    async fn put_replica(
        &self,
        request: Request<proto::Replica>,
    ) -> std::result::Result<Response<proto::NoticeReply>, Status> {
        let r = request.into_inner();
        let (env, rdd, split) = self.block(r.rdd, r.split)?;
        tokio::task::spawn_blocking(move || env.blocks.put_replica(rdd, split, &r.data, r.size, r.records))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Some(changed) = self.blocks_changed.get() {
            changed();
        }
        Ok(Response::new(proto::NoticeReply {}))
    }

    async fn map_outputs_ready(
        &self,
        request: Request<tonic::Streaming<proto::MapOutputNotice>>,
    ) -> std::result::Result<Response<proto::NoticeReply>, Status> {
        let mut notices = request.into_inner();
        while let Some(notice) = notices.message().await? {
            let status = postcard::from_bytes::<MapStatus>(&notice.status)
                .map_err(|e| Status::invalid_argument(format!("a map status does not decode: {e}")))?;
            match self.notices.get() {
                Some(take) => take(status, notice.segments.into_iter().map(|s| (s.data, s.framed)).collect()),
                // Not serving yet: its reducers ask the driver instead.
                None => tracing::debug!("a map output was announced before this executor started"),
            }
        }
        Ok(Response::new(proto::NoticeReply {}))
    }

    async fn fetch_block(
        &self,
        request: Request<proto::BlockRequest>,
    ) -> std::result::Result<Response<proto::BlockReply>, Status> {
        let r = request.into_inner();
        let (env, rdd, split) = self.block(r.rdd, r.split)?;
        // One message: a larger partition is computed again by the reader (told so before
        // anything is read).
        match env.blocks.cached_size(rdd, split) {
            None => return Ok(Response::new(proto::BlockReply::default())),
            Some(size) if size > ember_core::storage::MAX_REPLICA_BYTES => {
                return Ok(Response::new(proto::BlockReply { too_large: true, ..Default::default() }))
            }
            Some(_) => {}
        }
        // A few copies at a time: each holds the partition in memory while it is sent.
        static SERVING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let _turn = SERVING.acquire().await.map_err(|e| Status::internal(e.to_string()))?;
        let copy = tokio::task::spawn_blocking(move || env.blocks.block_file_bytes(rdd, split))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(match copy {
            Some((data, size, records)) if data.len() as u64 <= ember_core::storage::MAX_REPLICA_BYTES => {
                proto::BlockReply { found: true, data, size, records, too_large: false }
            }
            Some(_) => proto::BlockReply { too_large: true, ..Default::default() },
            None => proto::BlockReply::default(),
        }))
    }

    async fn fetch_segments(
        &self,
        request: Request<proto::FetchRequest>,
    ) -> std::result::Result<Response<Self::FetchSegmentsStream>, Status> {
        let env = self.env.get().cloned().ok_or_else(|| Status::unavailable("the executor is starting"))?;
        let r = request.into_inner();
        let reduce =
            usize::try_from(r.reduce).map_err(|_| Status::invalid_argument("reduce partition out of range"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // A bounded number of fetches is served at once, each holding a piece of a segment and a
        // few chunks in memory; the others wait their turn (reducers bound their own side).
        let turn = SERVING_FETCHES.acquire().await.map_err(|e| Status::internal(e.to_string()))?;
        // Segments are read from memory or disk on a blocking thread a piece at a time, so a
        // fetch holds at most a chunk being filled and the few the channel queues, whatever
        // the size of the segment.
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let mut chunk = proto::SegmentChunk::default();
            let mut size = 0usize;
            for (index, m) in r.maps.iter().enumerate() {
                let opened = usize::try_from(m.map)
                    .map_err(|_| Error::InvalidArgument("map partition out of range".into()))
                    .and_then(|map| env.shuffle.open_segment(ShuffleId(r.shuffle), map, m.attempt, reduce));
                let mut sent = Ok(());
                if let Ok(source) = &opened {
                    let (len, framed) = (source.len(), source.framed());
                    let mut from = 0u64;
                    // At least one piece, empty for an empty segment.
                    loop {
                        let n = (len - from).min(PIECE_BYTES as u64) as usize;
                        let mut data = Vec::with_capacity(n);
                        if let Err(e) = source.read(from, n, &mut data) {
                            sent = Err(e);
                            break;
                        }
                        from += n as u64;
                        let last = from == len;
                        size += data.len() + 16;
                        chunk.pieces.push(proto::SegmentPiece { index: index as u32, data, framed, last });
                        if size >= PIECE_BYTES {
                            if tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                                return;
                            }
                            size = 0;
                        }
                        if last {
                            break;
                        }
                    }
                }
                if let Err(e) = opened.and(sent) {
                    if !chunk.pieces.is_empty() {
                        let _ = tx.blocking_send(Ok(std::mem::take(&mut chunk)));
                    }
                    let _ = tx.blocking_send(Err(Status::not_found(e.to_string())));
                    return;
                }
            }
            if !chunk.pieces.is_empty() {
                let _ = tx.blocking_send(Ok(chunk));
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// How many fetches of map outputs an executor serves at once.
const SERVED_AT_ONCE: usize = 8;

static SERVING_FETCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SERVED_AT_ONCE);

/// Fetches segments from other executors' data planes.
pub(crate) struct Fetcher {
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) auth: Auth,
    pub(crate) addresses: Addresses,
    /// TLS for connections to other executors' data planes, when on.
    tls: Option<Arc<crate::tls::Tls>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// The open announcement stream to each peer executor, with a number of its own.
    announcers: Arc<Mutex<HashMap<String, (u64, NoticeTx)>>>,
    /// Small map outputs other executors pushed with their announcements.
    pushed: Pushed,
}

type NoticeTx = tokio::sync::mpsc::UnboundedSender<proto::MapOutputNotice>;

/// Numbers announcement streams, so that one that ended removes itself and not its successor.
static STREAMS: AtomicU64 = AtomicU64::new(0);

/// A pushed output's segments, in reduce order: bytes and whether each is a record stream.
type Segments = Arc<Vec<(Vec<u8>, bool)>>;

/// Small map outputs pushed to this executor, by (shuffle, map, attempt), within a byte cap
/// (beyond it, pushes are dropped and reducers fetch).
#[derive(Default)]
struct Pushed {
    outputs: Mutex<HashMap<(ShuffleId, usize, u64), Segments>>,
    bytes: AtomicU64,
    cap: AtomicU64,
}

/// How long a task waits for another executor to send it a cached partition.
const BLOCK_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The largest output a map task pushes with its announcement.
pub(crate) const PUSH_MAX_BYTES: usize = 64 << 10;

impl Fetcher {
    pub(crate) fn new(
        handle: tokio::runtime::Handle,
        auth: Auth,
        addresses: Addresses,
        tls: Option<Arc<crate::tls::Tls>>,
    ) -> Fetcher {
        Fetcher {
            handle,
            auth,
            addresses,
            tls,
            channels: Mutex::default(),
            announcers: Arc::default(),
            pushed: Pushed::default(),
        }
    }

    /// Bounds what pushed outputs may hold here.
    pub(crate) fn set_push_cap(&self, bytes: u64) {
        self.pushed.cap.store(bytes, Ordering::Relaxed);
    }

    /// Keeps the segments of a small output another executor pushed.
    pub(crate) fn keep_pushed(&self, status: &MapStatus, segments: Vec<(Vec<u8>, bool)>) {
        let size: u64 = segments.iter().map(|(d, _)| d.len() as u64 + 16).sum();
        if segments.is_empty()
            || self.pushed.bytes.load(Ordering::Relaxed) + size > self.pushed.cap.load(Ordering::Relaxed)
        {
            return;
        }
        let key = (status.shuffle, status.map, status.attempt);
        let mut outputs = self.pushed.outputs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = outputs.insert(key, Arc::new(segments)) {
            let freed: u64 = old.iter().map(|(d, _)| d.len() as u64 + 16).sum();
            self.pushed.bytes.fetch_sub(freed, Ordering::Relaxed);
        }
        self.pushed.bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// Closes the announcement streams to executors that are not among `live` any more.
    pub(crate) fn keep_streams_to(&self, live: &std::collections::HashSet<String>) {
        self.announcers.lock().unwrap_or_else(|p| p.into_inner()).retain(|peer, _| live.contains(peer));
    }

    /// Forgets the pushed outputs of a removed shuffle.
    pub(crate) fn forget_shuffle(&self, shuffle: ShuffleId) {
        let mut outputs = self.pushed.outputs.lock().unwrap_or_else(|p| p.into_inner());
        outputs.retain(|k, v| {
            let keep = k.0 != shuffle;
            if !keep {
                let freed: u64 = v.iter().map(|(d, _)| d.len() as u64 + 16).sum();
                self.pushed.bytes.fetch_sub(freed, Ordering::Relaxed);
            }
            keep
        });
    }

    /// Segment `reduce` of every output in `maps`, when all were pushed here.
    fn read_pushed(
        &self,
        shuffle: ShuffleId,
        reduce: usize,
        maps: &[(usize, u64)],
        out: &mut Vec<u8>,
    ) -> Option<Vec<MemorySegment>> {
        let found: Vec<Segments> = {
            let outputs = self.pushed.outputs.lock().unwrap_or_else(|p| p.into_inner());
            maps.iter().map(|&(map, attempt)| outputs.get(&(shuffle, map, attempt)).cloned()).collect::<Option<_>>()?
        };
        let mut segments = Vec::with_capacity(maps.len());
        for output in &found {
            let (data, framed) = output.get(reduce)?;
            segments.push(MemorySegment { at: out.len(), len: data.len(), framed: *framed });
            out.extend_from_slice(data);
        }
        Some(segments)
    }

    /// Partition `split` of `rdd` as executor `holder` keeps it (its block file's bytes, size
    /// and record count), or `None` when it does not hold it. Blocks the calling (task) thread.
    pub(crate) fn fetch_block(
        &self,
        holder: &str,
        rdd: ember_core::storage::RddId,
        split: usize,
    ) -> ember_core::Result<Option<(Vec<u8>, u64, u64)>> {
        let network = |m: String| Error::io(format!("executor {holder}"), std::io::Error::other(m));
        let mut client = self.client(holder).map_err(network)?;
        let request = proto::BlockRequest { rdd: rdd.0, split: split as u64 };
        let reply = self
            .handle
            .block_on(async move { tokio::time::timeout(BLOCK_FETCH_TIMEOUT, client.fetch_block(request)).await })
            .map_err(|_| network(format!("no answer within {} s", BLOCK_FETCH_TIMEOUT.as_secs())))?
            .map_err(|s| network(s.message().to_string()))?
            .into_inner();
        if reply.too_large {
            return Err(network(format!(
                "partition {split} of rdd {} is larger than a copy may be ({} bytes)",
                rdd.0,
                ember_core::storage::MAX_REPLICA_BYTES
            )));
        }
        Ok(reply.found.then_some((reply.data, reply.size, reply.records)))
    }

    /// Sends a copy of a cached partition to executor `peer`, without waiting.
    pub(crate) fn replicate(&self, peer: &str, replica: proto::Replica) {
        let Ok(mut client) = self.client(peer) else {
            tracing::warn!("no second copy of a partition: executor {peer} is unknown");
            return;
        };
        let peer = peer.to_string();
        self.handle.spawn(async move {
            if let Err(e) = client.put_replica(replica).await {
                tracing::warn!("executor {peer} did not keep a copy of a partition: {}", e.message());
            }
        });
    }

    /// Announces a finished map output to `peers` (executor ids), without waiting; a small
    /// output's segments (`pushed`) go with it. Each peer's notices go, in order, on one stream
    /// opened at the first and again after it broke (a peer that left); a notice that does not
    /// arrive leaves the peer's reducers to ask the driver.
    pub(crate) fn announce(&self, peers: &[String], status: &MapStatus, pushed: &[(Vec<u8>, bool)]) {
        let Ok(bytes) = postcard::to_allocvec(status) else { return };
        let segments: Vec<proto::PushedSegment> =
            pushed.iter().map(|(data, framed)| proto::PushedSegment { data: data.clone(), framed: *framed }).collect();
        let mut announcers = self.announcers.lock().unwrap_or_else(|p| p.into_inner());
        for peer in peers {
            let notice = proto::MapOutputNotice { status: bytes.clone(), segments: segments.clone() };
            let notice = match announcers.get(peer) {
                None => notice,
                Some((_, tx)) => match tx.send(notice) {
                    Ok(()) => continue,
                    // The stream ended: open another.
                    Err(tokio::sync::mpsc::error::SendError(notice)) => notice,
                },
            };
            let Ok(mut client) = self.client(peer) else {
                announcers.remove(peer);
                continue;
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let _ = tx.send(notice);
            let number = STREAMS.fetch_add(1, Ordering::Relaxed);
            announcers.insert(peer.clone(), (number, tx));
            let (peer, streams) = (peer.clone(), self.announcers.clone());
            self.handle.spawn(async move {
                let notices = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
                if let Err(e) = client.map_outputs_ready(notices).await {
                    tracing::debug!("announcing map outputs to executor {peer} failed: {}", e.message());
                }
                // Ended: the next notice opens another stream.
                let mut streams = streams.lock().unwrap_or_else(|p| p.into_inner());
                if streams.get(&peer).is_some_and(|(n, _)| *n == number) {
                    streams.remove(&peer);
                }
            });
        }
    }

    fn client(
        &self,
        executor: &str,
    ) -> std::result::Result<proto::block_transfer_client::BlockTransferClient<AuthChannel>, String> {
        let address = self
            .addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(executor)
            .cloned()
            .ok_or_else(|| format!("the address of executor {executor} is unknown"))?;
        let channel = {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            match channels.get(&address) {
                Some(c) => c.clone(),
                None => {
                    let endpoint = crate::tls::endpoint(&address, self.tls.as_deref())
                        .map_err(|e| format!("executor {executor} at {address}: {e}"))?
                        .connect_timeout(std::time::Duration::from_secs(10))
                        .tcp_nodelay(true);
                    let c = {
                        let _guard = self.handle.enter();
                        endpoint.connect_lazy()
                    };
                    channels.insert(address, c.clone());
                    c
                }
            }
        };
        Ok(proto::block_transfer_client::BlockTransferClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::MAX_MESSAGE_BYTES))
    }
}

impl RemoteSegments for Fetcher {
    fn fetch(
        &self,
        executor: &str,
        shuffle: ShuffleId,
        reduce: usize,
        maps: &[(usize, u64)],
        out: &mut Vec<u8>,
    ) -> std::result::Result<Vec<MemorySegment>, (usize, String)> {
        let mark = out.len();
        if let Some(segments) = self.read_pushed(shuffle, reduce, maps, out) {
            return Ok(segments);
        }
        out.truncate(mark);
        let mut client = self.client(executor).map_err(|e| (0, e))?;
        let request = proto::FetchRequest {
            shuffle: shuffle.0,
            reduce: reduce as u64,
            maps: maps.iter().map(|&(map, attempt)| proto::MapAttempt { map: map as u64, attempt }).collect(),
        };
        self.handle.block_on(async {
            let mut stream =
                client.fetch_segments(request).await.map_err(|e| (0, e.message().to_string()))?.into_inner();
            let mut segments = Vec::with_capacity(maps.len());
            let mut start = out.len();
            loop {
                let chunk = match stream.message().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => return Err((segments.len(), e.message().to_string())),
                };
                for piece in chunk.pieces {
                    if piece.index as usize != segments.len() {
                        return Err((segments.len(), "segments arrived out of order".into()));
                    }
                    out.extend_from_slice(&piece.data);
                    if piece.last {
                        segments.push(MemorySegment { at: start, len: out.len() - start, framed: piece.framed });
                        start = out.len();
                    }
                }
            }
            if segments.len() != maps.len() {
                return Err((segments.len(), "the stream ended early".into()));
            }
            Ok(segments)
        })
    }
}

/// The driver's map output tracker as an executor sees it: the statuses of each shuffle its
/// reducers read, fetched once and again whenever a task arrives from a newer epoch (outputs
/// were lost and recomputed since).
pub(crate) struct Mirror {
    tracker: MapOutputTracker,
    /// Map outputs other executors announced, by shuffle, until the shuffle's map count is
    /// known here (a pre-scheduled reducer brings it).
    notices: Mutex<HashMap<ShuffleId, Vec<MapStatus>>>,
    /// When the driver was last asked about a shuffle a held task waits for.
    asked: Mutex<HashMap<ShuffleId, std::time::Instant>>,
    /// The application's executors now (this one included): an announced output held by one
    /// that left is replaced by the next announcement of that map.
    live: RwLock<std::collections::HashSet<String>>,
    /// The driver's epoch when each shuffle was fetched.
    fetched: Mutex<HashMap<ShuffleId, u64>>,
    /// The newest epoch of a task this executor was sent.
    epoch_seen: AtomicU64,
    driver: proto::driver_client::DriverClient<AuthChannel>,
    handle: tokio::runtime::Handle,
    addresses: Addresses,
}

impl Mirror {
    pub(crate) fn new(
        driver: proto::driver_client::DriverClient<AuthChannel>,
        handle: tokio::runtime::Handle,
        addresses: Addresses,
    ) -> Mirror {
        Mirror {
            tracker: MapOutputTracker::new(),
            notices: Mutex::default(),
            asked: Mutex::default(),
            live: RwLock::default(),
            fetched: Mutex::default(),
            epoch_seen: AtomicU64::new(0),
            driver,
            handle,
            addresses,
        }
    }

    /// A task of `epoch` arrived.
    pub(crate) fn observe_epoch(&self, epoch: u64) {
        self.epoch_seen.fetch_max(epoch, Ordering::Relaxed);
    }

    /// Makes sure the statuses of `shuffle` are at least as new as the newest task seen. The
    /// table is replaced at once, so concurrent readers see the old one or the new one. A
    /// failure to reach the driver is an I/O error (the task is retried), not a fetch failure:
    /// no output is known to be missing.
    fn ensure(&self, shuffle: ShuffleId, maps: usize, reduce: usize) -> ember_core::Result<()> {
        let failed = |why: String| Error::io("the driver's map output tracker", std::io::Error::other(why));
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        let seen = self.epoch_seen.load(Ordering::Relaxed);
        if fetched.get(&shuffle).is_some_and(|&e| e >= seen) {
            return Ok(());
        }
        let mut driver = self.driver.clone();
        let reply = self
            .handle
            .block_on(driver.map_outputs(proto::MapOutputsRequest { shuffle: shuffle.0 }))
            .map_err(|e| failed(format!("it did not say where the map outputs are: {}", e.message())))?
            .into_inner();
        if reply.statuses.len() != maps {
            // The driver no longer knows the shuffle (it was removed while this task ran), or
            // knows another: nothing to read, and nothing is installed.
            return Err(Error::FetchFailed {
                shuffle: shuffle.0,
                map: 0,
                reduce,
                message: format!("the driver knows {} map outputs of the shuffle, not {maps}", reply.statuses.len()),
            });
        }
        let complete = reply.statuses.iter().all(|b| !b.is_empty());
        let mut statuses = Vec::with_capacity(maps);
        for bytes in reply.statuses.iter().filter(|b| !b.is_empty()) {
            statuses.push(
                postcard::from_bytes::<MapStatus>(bytes)
                    .map_err(|e| failed(format!("a map status it sent does not decode: {e}")))?,
            );
        }
        if let Some((s, why)) = self.tracker.replace_shuffle(shuffle, maps, statuses).into_iter().next() {
            return Err(failed(format!("it sent a status this executor refuses for map {}: {why:?}", s.map)));
        }
        self.addresses.write().unwrap_or_else(|p| p.into_inner()).extend(reply.executors);
        // A table with outputs missing is asked for again by the next reducer.
        if complete {
            fetched.insert(shuffle, reply.epoch.max(seen));
        } else {
            fetched.remove(&shuffle);
        }
        Ok(())
    }
}

impl Mirror {
    /// The application's executors are now `live` (this one included).
    pub(crate) fn set_live(&self, live: std::collections::HashSet<String>) {
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = live;
    }

    /// Whether an announced output of `map` may be installed: none is known, or the one known
    /// is held by an executor that left. (As on the driver the first attempt to succeed wins:
    /// a later one is a speculative loser about to be deleted.)
    fn may_install(&self, shuffle: ShuffleId, map: usize) -> bool {
        match self.tracker.location_of(shuffle, map) {
            None => true,
            Some(holder) => !self.live.read().unwrap_or_else(|p| p.into_inner()).contains(&*holder),
        }
    }

    /// A map output finished on this executor or another: known here from now on.
    pub(crate) fn notice(&self, status: MapStatus) {
        let maps = self.tracker.map_count(status.shuffle);
        if maps > 0 {
            if self.may_install(status.shuffle, status.map) {
                let _ = self.tracker.register(status, maps, u64::MAX);
            }
        } else {
            self.notices.lock().unwrap_or_else(|p| p.into_inner()).entry(status.shuffle).or_default().push(status);
        }
    }

    /// Whether every one of the `maps` outputs of `shuffle` is known here (from announcements,
    /// or from the driver when `ask_driver` and it was not asked lately). A complete table is
    /// fresh: reducers read it without asking the driver.
    pub(crate) fn complete(&self, shuffle: ShuffleId, maps: usize, ask_driver: bool) -> bool {
        if self.known(shuffle, maps) {
            let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
            Self::fresh(&mut fetched, shuffle, self.epoch_seen.load(Ordering::Relaxed));
            return true;
        }
        if ask_driver {
            let due = {
                let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
                let now = std::time::Instant::now();
                let last = asked.entry(shuffle).or_insert_with(|| now.checked_sub(ASK_EVERY).unwrap_or(now));
                let due = last.elapsed() >= ASK_EVERY || *last == now;
                if due {
                    *last = std::time::Instant::now();
                }
                due
            };
            if due && self.ensure(shuffle, maps, 0).is_ok() {
                return self.tracker.missing(shuffle, maps).is_empty();
            }
        }
        false
    }

    /// [`complete`](Self::complete) without asking the driver and without waiting for one
    /// who does (it holds the table's lock through a round trip): `None` when it would wait.
    /// What threads that must not block (the runtime's) check held tasks with.
    pub(crate) fn complete_now(&self, shuffle: ShuffleId, maps: usize) -> Option<bool> {
        if !self.known(shuffle, maps) {
            return Some(false);
        }
        let mut fetched = match self.fetched.try_lock() {
            Ok(f) => f,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Self::fresh(&mut fetched, shuffle, self.epoch_seen.load(Ordering::Relaxed));
        Some(true)
    }

    /// Whether every one of the `maps` outputs of `shuffle` is known here, announcements
    /// waiting for the map count installed first.
    fn known(&self, shuffle: ShuffleId, maps: usize) -> bool {
        let pending = self.notices.lock().unwrap_or_else(|p| p.into_inner()).remove(&shuffle);
        for s in pending.into_iter().flatten() {
            if s.map < maps && self.may_install(s.shuffle, s.map) {
                let _ = self.tracker.register(s, maps, u64::MAX);
            }
        }
        self.tracker.map_count(shuffle) == maps && self.tracker.missing(shuffle, maps).is_empty()
    }

    /// Records a complete table as fresh at epoch `seen`: reducers read it without asking.
    fn fresh(fetched: &mut HashMap<ShuffleId, u64>, shuffle: ShuffleId, seen: u64) {
        let e = fetched.entry(shuffle).or_insert(seen);
        *e = (*e).max(seen);
    }
}

/// How often a held task's executor asks the driver about a shuffle whose announcements are
/// late (one may have been lost with a connection).
const ASK_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

impl MapOutputLocations for Mirror {
    fn reduce_blocks_into(
        &self,
        shuffle: ShuffleId,
        maps: usize,
        reduce: usize,
        column: &mut Vec<ReduceBlock>,
    ) -> ember_core::Result<()> {
        self.ensure(shuffle, maps, reduce)?;
        self.tracker.reduce_blocks_into(shuffle, maps, reduce, column)
    }

    fn map_locations(&self, shuffle: ShuffleId, maps: usize, reduce: usize) -> ember_core::Result<Arc<MapLocations>> {
        self.ensure(shuffle, maps, reduce)?;
        self.tracker.map_locations(shuffle, maps, reduce)
    }

    fn executor(&self, index: u32) -> Option<Arc<str>> {
        self.tracker.executor(index)
    }

    fn remove_shuffle(&self, shuffle: ShuffleId) {
        self.fetched.lock().unwrap_or_else(|p| p.into_inner()).remove(&shuffle);
        self.notices.lock().unwrap_or_else(|p| p.into_inner()).remove(&shuffle);
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).remove(&shuffle);
        MapOutputLocations::remove_shuffle(&self.tracker, shuffle);
    }
}

/// Fetches from the driver what tasks need of it: broadcast values, and the lineage of nodes
/// cut from task bodies.
pub(crate) struct FromDriver {
    pub(crate) driver: proto::driver_client::DriverClient<AuthChannel>,
    pub(crate) handle: tokio::runtime::Handle,
}

impl FromDriver {
    /// The chunks of one streamed reply, joined; `what` names it in errors.
    fn chunks<C>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<tonic::Streaming<C>>, Status>>,
        data: impl Fn(C) -> Vec<u8>,
    ) -> ember_core::Result<Vec<u8>> {
        let failed = |why: String| Error::io(what, std::io::Error::other(why));
        self.handle.block_on(async {
            let mut stream =
                call.await.map_err(|e| failed(format!("the driver did not send it: {}", e.message())))?.into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await.map_err(|e| failed(e.message().to_string()))? {
                bytes.extend_from_slice(&data(chunk));
            }
            Ok(bytes)
        })
    }
}

impl ember_core::broadcast::RemoteBroadcasts for FromDriver {
    fn fetch(&self, id: u64) -> ember_core::Result<Vec<u8>> {
        let mut driver = self.driver.clone();
        self.chunks(
            &format!("broadcast {id}"),
            async move { driver.broadcast(proto::BroadcastRequest { id }).await },
            |c| c.data,
        )
    }
}

impl ember_core::rdd::RemoteLineage for FromDriver {
    fn fetch(&self, rdd: ember_core::storage::RddId) -> ember_core::Result<Vec<u8>> {
        let mut driver = self.driver.clone();
        let request = proto::LineageRequest { rdd: rdd.0 };
        self.chunks(&format!("the lineage of rdd {}", rdd.0), async move { driver.lineage(request).await }, |c| c.data)
    }
}
