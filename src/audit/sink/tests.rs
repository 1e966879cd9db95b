//! The worker with a file sink: when it syncs and acknowledges (`Sink::sync_interval`).
//! A harness runs one worker on its own thread against a disk spool the test appends to.

use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::file::SyncProbe;
use super::*;
use crate::audit::loss;
use crate::audit::spool::{SpoolOptions, SpoolWriter, encode_record};
use crate::audit::writer::Queue;
use crate::config::{AuditFormat, FsyncPolicy};

const SINK: &str = "file";

struct Harness {
    dir: tempfile::TempDir,
    spool: Arc<Spool>,
    writer: SpoolWriter,
    head: watch::Sender<u64>,
    phase: watch::Sender<Phase>,
    stats: Arc<SinkStats>,
    probe: Arc<SyncProbe>,
    next: u64,
    thread: Option<JoinHandle<()>>,
    _jobs: std::sync::mpsc::Receiver<Job>,
}

impl Harness {
    fn start(fsync: FsyncPolicy, fsync_interval: Duration, max_size: Option<u64>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let options = SpoolOptions {
            dir: Some(dir.path().join("spool")),
            max_size: 8 << 20,
            // A segment per append or two: acknowledgements release segments.
            segment_size: 256,
        };
        let recovered = Spool::open(&options, &[SINK.to_owned()]).unwrap();
        let spool = recovered.spool.clone();
        let mut settings = SinkSettings::new(
            SINK,
            AuditFormat::Json,
            SinkKind::File {
                path: dir.path().join("audit.jsonl"),
                max_size,
                max_files: 3,
            },
        );
        settings.batch_wait = Duration::from_millis(10);
        settings.retry_initial = Duration::from_millis(10);
        settings.retry_max = Duration::from_millis(50);
        let sink = Sink::build(&settings, None, file_sync_interval(fsync, fsync_interval)).unwrap();
        let Sink::File(file) = &sink else {
            unreachable!("a file sink")
        };
        let probe = file.probe.clone();
        let (tickets, _) = loss::Tickets::open(None).unwrap();
        let counters = Arc::new(Counters::new(tickets));
        let (queue, jobs) = Queue::new(64);
        let (head, head_rx) = watch::channel(0);
        let (phase, phase_rx) = watch::channel(Phase::Run);
        let stats = Arc::new(SinkStats::new(SINK, 0));
        let worker = Worker {
            sink,
            settings,
            spool: spool.clone(),
            head: head_rx,
            phase: phase_rx,
            stats: stats.clone(),
            emitter: Emitter {
                queue,
                gateway: "gw-test".into(),
                counters: counters.clone(),
            },
            counters,
            dead_letter: None,
            unacked: Unacked::default(),
        };
        let thread = std::thread::spawn(move || run_workers(vec![worker]));
        Harness {
            dir,
            spool,
            writer: recovered.writer,
            head,
            phase,
            stats,
            probe,
            next: 1,
            thread: Some(thread),
            _jobs: jobs,
        }
    }

    /// Append `n` events to the spool (one write) and publish them.
    fn append(&mut self, n: u64) {
        let first = self.next;
        let mut buf = Vec::new();
        for seq in first..first + n {
            encode_record(&mut buf, seq, format!("{{\"seq\":{seq}}}").as_bytes());
        }
        self.next += n;
        self.writer.append(first, self.next - 1, buf).unwrap();
        self.head.send_replace(self.next - 1);
    }

    /// The acknowledged seq. The worker sets `stats.cursor` last (after persisting the cursor
    /// and releasing segments), so once it shows a seq the rest is done.
    fn cursor(&self) -> u64 {
        self.stats.cursor.load(Ordering::SeqCst)
    }

    /// The persisted cursor (0 when there is no cursor file yet).
    fn cursor_file(&self) -> u64 {
        std::fs::read_to_string(self.dir.path().join("spool/cursors").join(SINK))
            .map_or(0, |t| t.trim().parse().unwrap())
    }

    fn syncs(&self) -> u64 {
        self.probe.syncs.load(Ordering::SeqCst)
    }

    /// The seqs in the output file, in order (duplicates included).
    fn lines(&self) -> Vec<u64> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    fn wait_until(&self, what: &str, within: Duration, mut cond: impl FnMut(&Harness) -> bool) {
        let deadline = Instant::now() + within;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: cursor {}, syncs {}, lines {:?}",
                self.spool.cursor(SINK),
                self.syncs(),
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Drain and wait for the worker to end.
    fn drain(&mut self) {
        self.phase.send_replace(Phase::Drain);
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.phase.send_replace(Phase::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const LONG: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn file_sink_acks_the_last_batch_within_the_interval_without_further_events() {
    let interval = Duration::from_secs(1);
    let mut h = Harness::start(FsyncPolicy::Interval, interval, None);
    h.append(5);
    // Nothing synced yet: the first sync is due at once.
    h.wait_until("the first batch acked", WAIT, |h| h.cursor() == 5);
    assert_eq!(h.syncs(), 1);
    h.append(5);
    h.append(5);
    assert!(h.spool.segment_count() >= 2, "the batches span segments");
    let appended = Instant::now();
    h.wait_until("the rest written", WAIT, |h| h.lines().len() == 15);
    // Within the interval of the first sync: written, not acknowledged; the worker goes idle
    // and its timer syncs and acknowledges.
    h.wait_until(
        "the rest acked with no event after it",
        interval + Duration::from_secs(3),
        |h| h.cursor() == 15,
    );
    assert!(appended.elapsed() < interval + Duration::from_secs(3));
    assert_eq!(
        h.syncs(),
        2,
        "one sync for the first batch, one for the rest"
    );
    assert_eq!(h.cursor_file(), 15);
    assert_eq!(
        h.spool.segment_count(),
        1,
        "acknowledged segments are released"
    );
    assert_eq!(h.lines(), (1..=15).collect::<Vec<_>>());
}

#[test]
fn file_sink_never_acks_events_whose_sync_failed_and_resends_them() {
    let mut h = Harness::start(FsyncPolicy::Interval, Duration::from_millis(20), None);
    h.probe.fail.store(true, Ordering::SeqCst);
    h.append(5);
    // Each failed sync rewinds to the cursor and writes the events again.
    h.wait_until("several failed syncs (or an acknowledgement)", WAIT, |h| {
        h.cursor() != 0 || (h.stats.retries.load(Ordering::Relaxed) >= 3 && h.lines().len() >= 10)
    });
    assert_eq!(h.cursor(), 0, "nothing unsynced is acknowledged");
    assert_eq!(h.cursor_file(), 0);
    assert_eq!(h.stats.failures.load(Ordering::Relaxed), 1, "one outage");
    h.probe.fail.store(false, Ordering::SeqCst);
    h.wait_until("acked once a sync succeeds", WAIT, |h| h.cursor() == 5);
    let lines = h.lines();
    assert!((1..=5).all(|seq| lines.contains(&seq)), "{lines:?}");
    assert_eq!(
        lines[lines.len() - 5..],
        [1, 2, 3, 4, 5],
        "the last copy is whole"
    );
    // The shutdown sync fails too: the cursor stays where the last good sync put it.
    h.append(3);
    h.wait_until("written", WAIT, |h| h.lines().ends_with(&[6, 7, 8]));
    h.probe.fail.store(true, Ordering::SeqCst);
    h.drain();
    assert_eq!(h.spool.cursor(SINK), 5);
    assert_eq!(h.cursor_file(), 5);
}

#[test]
fn file_sink_with_fsync_always_syncs_and_acks_every_batch() {
    // An interval that never comes: "always" ignores it.
    let mut h = Harness::start(FsyncPolicy::Always, LONG, None);
    for n in 1..=4 {
        h.append(4);
        h.wait_until("the batch acked", WAIT, |h| h.cursor() == 4 * n);
        assert_eq!(h.syncs(), n);
        assert_eq!(h.stats.batches.load(Ordering::Relaxed), n);
        assert_eq!(h.cursor_file(), 4 * n);
    }
    h.drain();
    assert_eq!(h.syncs(), 4, "nothing left to sync at the end");
}

#[test]
fn file_sink_syncs_once_per_interval_while_events_flow_and_once_more_when_draining() {
    let mut h = Harness::start(FsyncPolicy::Interval, LONG, None);
    h.append(4);
    h.wait_until("the first batch acked", WAIT, |h| h.cursor() == 4);
    for n in 2..=4 {
        h.append(4);
        h.wait_until("the batch written", WAIT, |h| h.lines().len() == 4 * n);
    }
    assert_eq!(h.cursor(), 4, "not acknowledged before the interval");
    assert_eq!(h.syncs(), 1);
    h.drain();
    assert_eq!(h.syncs(), 2);
    assert_eq!(h.spool.cursor(SINK), 16);
    assert_eq!(h.cursor_file(), 16);
}

/// A megabyte written is synced and acknowledged before the interval is up.
#[test]
fn file_sink_syncs_early_once_a_megabyte_is_written() {
    let mut h = Harness::start(FsyncPolicy::Interval, LONG, None);
    h.append(1);
    h.wait_until("the first event acked", WAIT, |h| h.cursor() == 1);
    // About 15 bytes a line: a megabyte is some 70,000 events.
    let mut total = 1;
    while total < 120_000 {
        h.append(2_000);
        total += 2_000;
    }
    h.wait_until("an early sync", WAIT, |h| h.syncs() >= 2 && h.cursor() > 1);
    assert!(h.cursor() >= 60_000, "acknowledged {}", h.cursor());
}

#[test]
fn file_sync_interval_follows_the_spool_policy() {
    let interval = Duration::from_millis(700);
    assert_eq!(
        file_sync_interval(FsyncPolicy::Always, interval),
        Duration::ZERO
    );
    assert_eq!(
        file_sync_interval(FsyncPolicy::Interval, interval),
        interval
    );
    assert_eq!(file_sync_interval(FsyncPolicy::Never, interval), interval);
}

#[test]
fn file_sink_rotation_keeps_every_acked_event_in_some_file() {
    let mut h = Harness::start(FsyncPolicy::Always, LONG, Some(64));
    for n in 1..=4 {
        // One batch at a time: 30 bytes each, so every other one rotates.
        h.append(3);
        h.wait_until("the batch acked", WAIT, |h| h.cursor() == 3 * n);
    }
    let path = h.dir.path().join("audit.jsonl");
    assert!(h.dir.path().join("audit.jsonl.1").exists(), "rotated");
    let mut seqs: Vec<u64> = ["audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1"]
        .iter()
        .map(|f| h.dir.path().join(f))
        .chain(std::iter::once(path))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                        .as_u64()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    seqs.dedup();
    // max_files = 3 keeps the newest files; whatever is kept is in order and ends at the head.
    assert_eq!(seqs.last(), Some(&12), "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}
