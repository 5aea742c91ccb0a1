//! Spool tests on the real filesystem.

use super::*;
use std::collections::HashSet;
use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

pub(crate) fn envelope(sender: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        received_at: 1_700_000_000,
        client: Some("127.0.0.2:40000".into()),
        helo: Some("client.example".into()),
        listener: "mx".into(),
        session: "S1".into(),
        size: 0,
        direction: Direction::Inbound,
        auth_user: None,
    }
}

const BODY: &[u8] = b"Subject: test\r\nFrom: <a@example.org>\r\n\r\nhello\r\n.leading dot kept\r\n";

async fn store(spool: &Spool, rcpts: &[&str], body: &[u8]) -> QueueId {
    let mut inc = spool.create(envelope("a@example.org", rcpts)).unwrap();
    let id = *inc.id();
    // Several writes, as the session does.
    for chunk in body.chunks(7) {
        inc.write(chunk).unwrap();
    }
    assert_eq!(inc.commit().await.unwrap(), body.len() as u64);
    id
}

fn body_of(spool: &Spool, id: &QueueId) -> Vec<u8> {
    let (_, _, mut body) = spool.read(id).unwrap();
    let mut out = Vec::new();
    body.read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, body.len());
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn commit_then_reopen_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, recovered) = Spool::open(dir.path()).unwrap();
    assert!(recovered.is_empty());
    let id = store(&spool, &["b@example.net", "c@example.net"], BODY).await;
    assert_eq!(names(&dir.path().join("incoming")), Vec::<String>::new());
    drop(spool);

    let (spool, recovered) = Spool::open(dir.path()).unwrap();
    assert_eq!(recovered.len(), 1);
    let m = &recovered[0];
    assert_eq!(m.id, id);
    assert_eq!(
        m.envelope.recipients,
        vec!["b@example.net", "c@example.net"]
    );
    assert_eq!(m.envelope.size, BODY.len() as u64);
    assert_eq!(m.state, DeliveryState::default());
    assert_eq!(body_of(&spool, &id), BODY);
    // Files are private to the spool's owner.
    let mode = fs::metadata(dir.path().join("queue").join(id.to_string()))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        fs::metadata(dir.path().join("queue")).unwrap().mode() & 0o777,
        0o700
    );
}

#[tokio::test]
async fn second_queue_process_is_refused_but_admin_may_open() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let err = Spool::open(dir.path())
        .err()
        .expect("second open must fail");
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    let id = store(&spool, &["b@example.net"], BODY).await;
    let admin = Spool::open_admin(dir.path()).unwrap();
    let list = admin.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    assert!(!list[0].held);
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        Spool::open_admin(empty.path()).err().map(|e| e.kind()),
        Some(io::ErrorKind::NotFound)
    );
}

#[tokio::test]
async fn dropped_and_leftover_incoming_files_are_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let mut inc = spool
        .create(envelope("a@example.org", &["b@example.net"]))
        .unwrap();
    inc.write(BODY).unwrap();
    let path = dir.path().join("incoming").join(inc.id().to_string());
    assert!(path.exists());
    drop(inc);
    assert!(!path.exists(), "an abandoned message is removed at once");

    // What a crash mid-DATA leaves behind: a started file without trailer, and junk.
    let mut torn = format::encode_header(&envelope("a@example.org", &["b@example.net"])).unwrap();
    torn.extend_from_slice(b"Subject: half");
    let torn_id = QueueId::generate();
    fs::write(dir.path().join("incoming").join(torn_id.to_string()), &torn).unwrap();
    fs::write(dir.path().join("incoming").join("junk"), b"x").unwrap();
    drop(spool);

    let (_spool, recovered) = Spool::open(dir.path()).unwrap();
    assert!(recovered.is_empty());
    assert_eq!(names(&dir.path().join("incoming")), Vec::<String>::new());
    assert_eq!(names(&dir.path().join("corrupt")), Vec::<String>::new());
}

#[tokio::test]
async fn torn_and_damaged_files_go_to_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let good = store(&spool, &["b@example.net"], BODY).await;
    let torn = store(&spool, &["b@example.net"], BODY).await;
    let flipped = store(&spool, &["b@example.net"], BODY).await;
    drop(spool);
    let queue = dir.path().join("queue");
    // Cut the end off one file (the trailer), flip a body byte in another.
    let torn_path = queue.join(torn.to_string());
    let len = fs::metadata(&torn_path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&torn_path)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let flipped_path = queue.join(flipped.to_string());
    let mut bytes = fs::read(&flipped_path).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x20;
    fs::write(&flipped_path, &bytes).unwrap();
    fs::write(queue.join("stray-file"), b"?").unwrap();

    let (spool, recovered) = Spool::open(dir.path()).unwrap();
    let ids: Vec<QueueId> = recovered.iter().map(|m| m.id).collect();
    // The flipped byte keeps the structure; recovery checks structure only.
    assert_eq!(ids, vec![good, flipped]);
    assert_eq!(
        names(&dir.path().join("corrupt")),
        vec![torn.to_string(), "stray-file".to_string()]
    );

    // The checksum catches the flipped byte before delivery.
    let err = spool
        .lease(&flipped)
        .err()
        .expect("damaged body must not be delivered");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(!flipped_path.exists());
    assert!(
        dir.path()
            .join("corrupt")
            .join(flipped.to_string())
            .exists()
    );
    assert!(matches!(spool.lease(&good).unwrap(), Leased::Ready(_)));
}

#[tokio::test]
async fn hold_release_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let a = store(&spool, &["a@example.net"], BODY).await;
    let b = store(&spool, &["b@example.net"], BODY).await;
    let c = store(&spool, &["c@example.net"], BODY).await;

    spool.hold(&a).unwrap();
    spool.hold(&a).unwrap(); // idempotent
    assert!(matches!(spool.lease(&a).unwrap(), Leased::Gone));
    let list = spool.list().unwrap();
    assert_eq!(
        list.iter().map(|e| (e.id, e.held)).collect::<Vec<_>>(),
        vec![(a, true), (b, false), (c, false)]
    );
    assert_eq!(spool.scan_queue().unwrap(), vec![b, c]);
    // show works for held messages too.
    assert_eq!(body_of(&spool, &a), BODY);

    spool.delete(&b).unwrap();
    assert!(matches!(spool.lease(&b).unwrap(), Leased::Gone));
    assert_eq!(
        spool.read(&b).err().map(|e| e.kind()),
        Some(io::ErrorKind::NotFound)
    );
    assert_eq!(
        spool.delete(&b).err().map(|e| e.kind()),
        Some(io::ErrorKind::NotFound)
    );

    spool.hold(&c).unwrap();
    spool.delete(&c).unwrap();

    // A deferred message released is due at once.
    assert!(spool.scan_queue().unwrap().is_empty());
    assert!(spool.list().unwrap().iter().all(|e| e.id == a));

    // A deferred message released is due at once.
    let deferred = DeliveryState {
        attempts: 2,
        next_attempt_ms: u64::MAX / 2,
        ..Default::default()
    };
    state::store(&spool.state_path(&a), &deferred).unwrap();
    spool.release(&a).unwrap();
    spool.release(&a).unwrap(); // idempotent
    assert_eq!(spool.load_state(&a).next_attempt_ms, 0);
    assert_eq!(spool.load_state(&a).attempts, 2);
    assert_eq!(
        spool.hold(&QueueId::generate()).err().map(|e| e.kind()),
        Some(io::ErrorKind::NotFound)
    );
    drop(spool);

    let (_spool, recovered) = Spool::open(dir.path()).unwrap();
    assert_eq!(recovered.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a]);
    assert_eq!(names(&dir.path().join("hold")), Vec::<String>::new());
    assert_eq!(names(&dir.path().join("state")), vec![a.to_string()]);
}

#[tokio::test]
async fn delete_waits_for_the_delivery_in_progress_and_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let id = store(&spool, &["b@example.net"], BODY).await;
    let Leased::Ready(lease) = spool.lease(&id).unwrap() else {
        panic!("not leased")
    };
    // An operator tool in another "process" (its own handle, its own thread).
    let admin = Spool::open_admin(dir.path()).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let deleter = std::thread::spawn(move || {
        done_tx
            .send(admin.delete(&id).map_err(|e| e.kind()))
            .unwrap()
    });
    assert!(
        done_rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "delete must wait while the message is being delivered"
    );
    // A second delivery attempt cannot start meanwhile.
    assert!(matches!(spool.lease(&id).unwrap(), Leased::Busy));
    drop(lease);
    assert_eq!(
        done_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Ok(())
    );
    deleter.join().unwrap();
    assert!(matches!(spool.lease(&id).unwrap(), Leased::Gone));

    // Delivered while the operator waited: delete then finds nothing.
    let id = store(&spool, &["b@example.net"], BODY).await;
    let Leased::Ready(lease) = spool.lease(&id).unwrap() else {
        panic!("not leased")
    };
    let admin = Spool::open_admin(dir.path()).unwrap();
    let deleter = std::thread::spawn(move || admin.delete(&id).map_err(|e| e.kind()));
    std::thread::sleep(Duration::from_millis(100));
    lease.remove_delivered().unwrap();
    assert_eq!(deleter.join().unwrap(), Err(io::ErrorKind::NotFound));
}

#[tokio::test]
async fn lease_records_state_and_removes_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let id = store(&spool, &["b@example.net", "c@example.net"], BODY).await;
    let Leased::Ready(mut lease) = spool.lease(&id).unwrap() else {
        panic!("not leased")
    };
    assert_eq!(lease.envelope().size, BODY.len() as u64);
    assert_eq!(
        lease.headers(MAX_DSN_HEADERS).unwrap(),
        b"Subject: test\r\nFrom: <a@example.org>\r\n"
    );
    let mut body = lease.body().unwrap();
    let mut first = Vec::new();
    body.read_to_end(&mut first).unwrap();
    body.rewind();
    let mut again = Vec::new();
    body.read_to_end(&mut again).unwrap();
    assert_eq!((first.as_slice(), again.as_slice()), (BODY, BODY));

    let mut st = lease.state().clone();
    st.attempts = 1;
    st.delivered.push("b@example.net".into());
    st.last_error
        .insert("c@example.net".into(), "451 4.3.0 try later".into());
    st.next_attempt_ms = 42;
    lease.record(&st).unwrap();
    assert_eq!(
        st.pending(lease.envelope()),
        vec!["c@example.net".to_string()]
    );
    drop(lease);
    drop(spool);
    // A state write interrupted before its rename leaves a .tmp file: ignored and removed.
    fs::write(
        dir.path().join("state").join(format!("{id}.tmp")),
        b"{\"attem",
    )
    .unwrap();
    fs::write(
        dir.path()
            .join("state")
            .join(QueueId::generate().to_string()),
        b"{}",
    )
    .unwrap();

    let (spool, recovered) = Spool::open(dir.path()).unwrap();
    assert_eq!(recovered[0].state, st);
    assert_eq!(names(&dir.path().join("state")), vec![id.to_string()]);
    let Leased::Ready(lease) = spool.lease(&id).unwrap() else {
        panic!("not leased")
    };
    lease.remove_delivered().unwrap();
    assert_eq!(names(&dir.path().join("queue")), Vec::<String>::new());
    assert_eq!(names(&dir.path().join("state")), Vec::<String>::new());
}

#[tokio::test]
async fn damaged_state_file_is_moved_aside_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let id = store(&spool, &["b@example.net"], BODY).await;
    fs::write(dir.path().join("state").join(id.to_string()), b"{not json").unwrap();
    drop(spool);
    let (_spool, recovered) = Spool::open(dir.path()).unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].state, DeliveryState::default());
    assert_eq!(
        names(&dir.path().join("corrupt")),
        vec![format!("{id}.state")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_share_directory_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut inc = spool
                .create(envelope("a@example.org", &["b@example.net"]))
                .unwrap();
            inc.write(format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes())
                .unwrap();
            let id = *inc.id();
            inc.commit().await.unwrap();
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let stats = spool.stats();
    eprintln!("group commit: {stats:?}");
    assert_eq!(stats.commits, 100);
    assert!(stats.dir_syncs < 100, "no group commit: {stats:?}");
    drop(spool);
    let (_spool, recovered) = Spool::open(dir.path()).unwrap();
    ids.sort();
    assert_eq!(recovered.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_removals_share_directory_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(store(&spool, &["b@example.net"], BODY).await);
    }
    let before = spool.stats();
    let barrier = Arc::new(std::sync::Barrier::new(ids.len()));
    let removers: Vec<_> = ids
        .iter()
        .map(|id| {
            let (spool, id, barrier) = (spool.clone(), *id, barrier.clone());
            std::thread::spawn(move || {
                let Leased::Ready(lease) = spool.lease(&id).unwrap() else {
                    panic!("not leased")
                };
                barrier.wait();
                lease.remove_delivered().unwrap();
            })
        })
        .collect();
    for r in removers {
        r.join().unwrap();
    }
    let after = spool.stats();
    let (syncs, removals) = (
        after.dir_syncs - before.dir_syncs,
        after.commits - before.commits,
    );
    eprintln!("removals: {removals} in {syncs} directory syncs");
    assert_eq!(removals, 50);
    assert!(syncs < 50, "removals do not share syncs: {syncs}");
    assert_eq!(names(&dir.path().join("queue")), Vec::<String>::new());
    drop(spool);
    let (_spool, recovered) = Spool::open(dir.path()).unwrap();
    assert!(recovered.is_empty());
}

#[tokio::test]
async fn delivered_files_are_emptied_and_reused() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let first = store(&spool, &["b@example.net"], BODY).await;
    let ino = fs::metadata(dir.path().join("queue").join(first.to_string()))
        .unwrap()
        .ino();
    let Leased::Ready(lease) = spool.lease(&first).unwrap() else {
        panic!("not leased")
    };
    lease.remove_delivered().unwrap();
    assert_eq!(names(&dir.path().join("queue")), Vec::<String>::new());
    let free = dir.path().join("free").join(first.to_string());
    assert_eq!(fs::metadata(&free).unwrap().len(), 0, "content left behind");

    // The next message is written into that file: same inode, new name, new content only.
    let body = b"Subject: second\r\n\r\nshort\r\n";
    let second = store(&spool, &["c@example.net"], body).await;
    assert_eq!(names(&dir.path().join("free")), Vec::<String>::new());
    let path = dir.path().join("queue").join(second.to_string());
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.ino(), ino, "file not reused");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(body_of(&spool, &second), body);
    let Leased::Ready(lease) = spool.lease(&second).unwrap() else {
        panic!("not leased")
    };
    assert_eq!(
        lease.envelope().recipients,
        vec!["c@example.net".to_string()]
    );
    drop(lease);
    drop(spool);
    let (_spool, recovered) = Spool::open(dir.path()).unwrap();
    assert_eq!(
        recovered.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![second]
    );
}

#[tokio::test]
async fn recovery_empties_free_files_and_keeps_a_bounded_number() {
    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(dir.path()).unwrap());
    let free = dir.path().join("free");
    // A crash between a removal and its truncation leaves content; junk may be there too.
    fs::write(free.join("left-with-content"), BODY).unwrap();
    fs::create_dir(free.join("a-directory")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), free.join("a-symlink")).unwrap();
    for i in 0..MAX_FREE + 5 {
        fs::write(free.join(format!("f{i}")), b"").unwrap();
    }
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let mut kept = names(&free);
    kept.retain(|n| n != "a-directory");
    assert!(
        free.join("a-directory").is_dir(),
        "directories are left alone"
    );
    assert_eq!(kept.len(), MAX_FREE);
    assert!(!kept.iter().any(|n| n == "a-symlink"));
    for name in &kept {
        assert_eq!(
            fs::metadata(free.join(name)).unwrap().len(),
            0,
            "{name} not emptied"
        );
    }
    // Reused files hold exactly the new message.
    let id = store(&spool, &["b@example.net"], BODY).await;
    assert_eq!(names(&free).len(), MAX_FREE);
    assert_eq!(body_of(&spool, &id), BODY);
}

#[tokio::test]
async fn small_bodies_are_leased_in_memory_large_ones_read_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let mut large = b"Subject: large\r\n\r\n".to_vec();
    while (large.len() as u64) <= MEMORY_BODY {
        large.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abc\r\n",
        );
    }
    for (body, in_memory) in [(BODY, true), (large.as_slice(), false)] {
        let id = store(&spool, &["b@example.net"], body).await;
        let Leased::Ready(lease) = spool.lease(&id).unwrap() else {
            panic!("not leased")
        };
        let mut reader = lease.body().unwrap();
        assert_eq!(reader.in_memory(), in_memory, "{} octets", body.len());
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert!(got == body, "body differs ({} octets)", body.len());
        // Seek and read again, as a failover does.
        io::Seek::seek(&mut reader, io::SeekFrom::Start(9)).unwrap();
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).unwrap();
        assert!(tail == body[9..]);
        assert_eq!(
            lease.headers(MAX_DSN_HEADERS).unwrap(),
            header_section(body).to_vec()
        );
    }
    // A damaged small body is still caught by the checksum before delivery.
    let id = store(&spool, &["b@example.net"], BODY).await;
    let path = dir.path().join("queue").join(id.to_string());
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    let err = spool.lease(&id).err().expect("damage not detected");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

/// Environment variable naming the spool directory of a child test process.
const CHILD_DIR: &str = "RAVELIN_SPOOL_CHILD_DIR";

/// This test binary, told to run one ignored test (`name`) on the spool at `dir`.
fn child_command(name: &str, dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_DIR, dir);
    cmd
}

/// Runs only inside the child started by `write_error_surfaces_and_nothing_is_stored`, whose
/// file size limit (RLIMIT_FSIZE) makes writes fail with EFBIG as a full disk would.
#[tokio::test]
#[ignore = "run by write_error_surfaces_and_nothing_is_stored in a child process"]
async fn fsize_limited_child() {
    let Some(path) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let (spool, _) = Spool::open(Path::new(&path)).unwrap();
    let mut inc = spool
        .create(envelope("a@example.org", &["b@example.net"]))
        .unwrap();
    let chunk = vec![b'x'; 1000];
    let mut result = Ok(());
    for _ in 0..1000 {
        result = inc.write(&chunk);
        if result.is_err() {
            break;
        }
    }
    let result = match result {
        Ok(()) => inc.commit().await.map(|_| ()),
        Err(e) => {
            assert_eq!(e.kind(), io::ErrorKind::FileTooLarge, "{e}");
            // Every later write and the commit fail too.
            assert!(inc.write(b"more").is_err());
            inc.commit().await.map(|_| ())
        }
    };
    assert!(
        result.is_err(),
        "writing past the file size limit must fail"
    );
    // A small message still fits and commits.
    let mut inc = spool
        .create(envelope("a@example.org", &["b@example.net"]))
        .unwrap();
    inc.write(BODY).unwrap();
    inc.commit().await.unwrap();
    println!("FSIZE-CHILD-OK");
}

#[test]
fn write_error_surfaces_and_nothing_is_stored() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = child_command("spool::tests::fsize_limited_child", dir.path());
    // SAFETY: only async-signal-safe calls (setrlimit, sigaction) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            use nix::sys::resource::{Resource, setrlimit};
            use nix::sys::signal::{SigHandler, Signal, signal};
            setrlimit(Resource::RLIMIT_FSIZE, 256 * 1024, 256 * 1024)?;
            signal(Signal::SIGXFSZ, SigHandler::SigIgn)?;
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("FSIZE-CHILD-OK"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (spool, recovered) = Spool::open(dir.path()).unwrap();
    assert_eq!(recovered.len(), 1, "only the small message is stored");
    assert_eq!(recovered[0].envelope.size, BODY.len() as u64);
    assert_eq!(names(&dir.path().join("incoming")), Vec::<String>::new());
    assert_eq!(names(&dir.path().join("corrupt")), Vec::<String>::new());
    drop(spool);
}

/// Runs only inside the child started by `sigkill_at_random_points_loses_nothing_acknowledged`:
/// four writers commit messages of varying size and act on some of them as operators and
/// deliveries do, printing each step only after it returned, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by sigkill_at_random_points_loses_nothing_acknowledged in a child process"]
async fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let (spool, _) = Spool::open(Path::new(&path)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let spool = spool.clone();
        writers.push(tokio::spawn(async move {
            let mut n = w;
            while std::time::Instant::now() < deadline {
                n += 1;
                let body = vec![b'a' + (n % 26) as u8; (n * 7919 % 200_000) as usize];
                let id = store(&spool, &["b@example.net"], &body).await;
                println!("committed {id}");
                let spool = spool.clone();
                tokio::task::spawn_blocking(move || match n % 4 {
                    1 => {
                        println!("deleting {id}");
                        spool.delete(&id).unwrap();
                        println!("deleted {id}");
                    }
                    2 => {
                        println!("holding {id}");
                        spool.hold(&id).unwrap();
                        println!("held {id}");
                    }
                    3 => {
                        println!("removing {id}");
                        let Leased::Ready(mut lease) = spool.lease(&id).unwrap() else {
                            panic!("not leased")
                        };
                        let state = DeliveryState {
                            attempts: 1,
                            ..Default::default()
                        };
                        lease.record(&state).unwrap();
                        lease.remove_delivered().unwrap();
                        println!("removed {id}");
                    }
                    _ => {}
                })
                .await
                .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing_acknowledged() {
    use std::collections::HashMap;
    use std::io::BufRead;
    for round in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = child_command("spool::tests::crash_child", dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        let kill_after = 5 + (nanos + round * 131) % 300;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut steps: HashMap<QueueId, Vec<String>> = HashMap::new();
        let mut seen = 0u64;
        // "<step> <id>", possibly after the test harness's "test … ... " on the first line.
        let mut record = |line: String| {
            let mut words = line.split(' ').rev();
            if let (Some(id), Some(step)) = (words.next(), words.next())
                && let Ok(id) = id.parse::<QueueId>()
            {
                steps.entry(id).or_default().push(step.to_string());
            }
        };
        for line in lines.by_ref() {
            record(line.unwrap());
            seen += 1;
            if seen >= kill_after {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for line in lines {
            match line {
                Ok(l) => record(l),
                Err(_) => break,
            }
        }
        assert!(seen >= kill_after, "child stopped early after {seen} lines");

        let (spool, recovered) = Spool::open(dir.path()).unwrap();
        let queued: HashSet<QueueId> = recovered.iter().map(|m| m.id).collect();
        let held: HashSet<QueueId> = spool
            .list()
            .unwrap()
            .into_iter()
            .filter(|e| e.held)
            .map(|e| e.id)
            .collect();
        for (id, done) in &steps {
            let has = |s: &str| done.iter().any(|d| d == s);
            let present = queued.contains(id) || held.contains(id);
            if has("deleted") || has("removed") {
                assert!(!present, "{id} {done:?} came back");
            } else if has("held") {
                assert!(held.contains(id), "{id} {done:?} not in hold/");
            } else if has("committed") && !has("deleting") && !has("removing") {
                assert!(present, "{id} {done:?} acknowledged but lost");
            }
        }
        // Nothing unacknowledged or torn survives, and what is queued is whole.
        assert_eq!(names(&dir.path().join("incoming")), Vec::<String>::new());
        assert_eq!(
            names(&dir.path().join("corrupt")),
            Vec::<String>::new(),
            "round {round}"
        );
        for id in &queued {
            assert!(
                matches!(spool.lease(id).unwrap(), Leased::Ready(_)),
                "{id} not deliverable"
            );
        }
        for name in names(&dir.path().join("state")) {
            let id: QueueId = name.parse().unwrap();
            assert!(
                queued.contains(&id) || held.contains(&id),
                "orphan state {name}"
            );
        }
    }
}

#[test]
fn header_section_cases() {
    assert_eq!(
        header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
        b"A: 1\r\nB: 2\r\n"
    );
    assert_eq!(header_section(b"\r\nbody\r\n"), b"");
    assert_eq!(header_section(b"A: 1\r\nB: trunc"), b"A: 1\r\n");
    assert_eq!(header_section(b"no line end"), b"");
}

#[tokio::test]
async fn quarantine_survives_restart_and_releases_into_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let mut inc = spool
        .create(envelope("a@example.org", &["b@example.org"]))
        .unwrap();
    let id = *inc.id();
    inc.write(BODY).unwrap();
    let info = QuarantineInfo {
        reason: "DMARC policy quarantine for example.com".into(),
        time: 1_700_000_100,
        verdict: "Authentication-Results: mx; dmarc=fail".into(),
    };
    assert_eq!(
        inc.commit_quarantined(&info).await.unwrap(),
        BODY.len() as u64
    );
    let qdir = dir.path().join("quarantine");
    assert_eq!(names(&qdir), [id.to_string(), format!("{id}.info")]);
    assert!(names(&dir.path().join("incoming")).is_empty());
    drop(spool);

    // Recovery neither queues nor discards it; the queue manager never sees it.
    let (spool, recovered) = Spool::open(dir.path()).unwrap();
    assert!(recovered.is_empty());
    assert!(spool.list().unwrap().is_empty());
    let admin = Spool::open_admin(dir.path()).unwrap();
    let listed = admin.quarantine_list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, &listed[0].info), (id, &info));
    let (stored, read_info, mut body) = admin.quarantine_read(&id).unwrap();
    assert_eq!(stored.recipients, ["b@example.org"]);
    assert_eq!(read_info, info);
    let mut out = Vec::new();
    body.read_to_end(&mut out).unwrap();
    assert_eq!(out, BODY);

    // Release: into queue/, the info gone, a flush requested; a second release fails.
    admin.quarantine_release(&id).unwrap();
    assert!(names(&qdir).is_empty());
    assert_eq!(spool.scan_queue().unwrap(), [id]);
    assert_eq!(body_of(&spool, &id), BODY);
    assert!(spool.take_flush_request().unwrap());
    let e = admin.quarantine_release(&id).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(e.to_string().contains("quarantine"), "{e}");

    // Delete is final.
    let mut inc = spool
        .create(envelope("a@example.org", &["c@example.org"]))
        .unwrap();
    let second = *inc.id();
    inc.write(BODY).unwrap();
    inc.commit_quarantined(&info).await.unwrap();
    admin.quarantine_delete(&second).unwrap();
    assert!(names(&qdir).is_empty());
    assert!(admin.quarantine_delete(&second).is_err());
}
