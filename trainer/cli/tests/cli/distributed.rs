//! Data-parallel training on MPI (`mpirun -np 2 trainer train ... --distributed`, OpenMPI from
//! Debian): two ranks equal one process accumulating two micro-batches, resume works across
//! world sizes, and a rank that dies, diverges, drifts or disagrees stops the whole job with an
//! error naming it while the last checkpoint stays resumable.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gantry_models::{Checkpoint, TensorMap};
use gantry_testkit::{stderr, tiny_train_args, write_mnist_fixture};

use super::{trainer, wait_until, TRAINER};

/// `mpirun` with what CI needs (root allowed, more ranks than cores allowed), one kernel thread
/// per rank, and `env`.
fn mpirun_command(np: usize, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = mpirun_base();
    c.args(["-np", &np.to_string(), TRAINER])
        .args(args)
        .arg("--distributed");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// `mpirun` as root in CI, with more ranks than cores allowed and one kernel thread per rank.
fn mpirun_base() -> Command {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .arg("--oversubscribe");
    c
}

/// An MPMD job: one rank per entry, each `trainer` with its own arguments (and
/// `--distributed`), launched as `mpirun -np 1 A : -np 1 B ...`.
fn mpmd(ranks: &[Vec<&str>]) -> Output {
    let mut c = mpirun_base();
    for (i, args) in ranks.iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["-np", "1", TRAINER])
            .args(args)
            .arg("--distributed");
    }
    c.output().expect("mpirun")
}

fn mpirun(np: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    mpirun_command(np, args, env)
        .output()
        .expect("mpirun (Debian openmpi-bin, installed by scripts/setup-tools.sh)")
}

/// `trainer` as one process with one kernel thread, like each rank: Gantry's kernels split
/// their sums by thread, so the comparison is of the same arithmetic.
fn trainer_1thread(args: &[&str]) -> Output {
    Command::new(TRAINER)
        .env("RAYON_NUM_THREADS", "1")
        .args(args)
        .output()
        .unwrap()
}

fn all_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The tensors of `maps` (each with its name prefix) whose names `keep` accepts, flattened and
/// sorted by prefixed name.
fn flat_tensors(
    maps: &[(&str, &TensorMap)],
    keep: impl Fn(&str) -> bool,
) -> Vec<(String, Vec<f32>)> {
    let mut all: Vec<_> = maps
        .iter()
        .flat_map(|(prefix, map)| {
            map.iter()
                .filter(|(name, _)| keep(name))
                .map(move |(name, t)| {
                    let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    (format!("{prefix}{name}"), values)
                })
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn load(dir: &Path) -> Checkpoint {
    Checkpoint::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Parameters of G and D and both optimisers' moments of a checkpoint (BatchNorm running
/// statistics are buffers each rank measures on its own slice: not compared).
fn trained_state(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let c = load(dir);
    let maps = [
        ("G.", &c.generator),
        ("D.", c.discriminator.as_ref().unwrap()),
        ("optG.", &c.optimizer_g.as_ref().unwrap().0),
        ("optD.", &c.optimizer_d.as_ref().unwrap().0),
    ];
    flat_tensors(&maps, |name| !name.contains("running"))
}

/// The largest relative difference between two states: per tensor, the largest absolute
/// difference over the tensor's largest magnitude (rounding from a different summation order
/// is relative to the size of what is summed, not to each element, so near-zero elements such
/// as young Adam moments are judged by their tensor's scale); and the tensor where it is.
fn max_relative_difference(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f32, String) {
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    let mut worst = (0.0f32, String::new());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let scale = y.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
        let diff = x
            .iter()
            .zip(y)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        if diff / scale > worst.0 {
            worst = (diff / scale, name.clone());
        }
    }
    worst
}

/// Two ranks summing their slices' gradients compute in floating point what one process
/// accumulating the same two micro-batches does (a + b is commutative; the micro-batches, their
/// BatchNorm statistics and their weights are the same; measured: bitwise equal for fresh runs,
/// and within 6e-8 after a resume, where the order of sums inside vectorised kernels can
/// change). The tolerance absorbs that and the reduction order of more ranks (MPI may add in
/// another order than the accumulation): 1e-5 relative, two orders of magnitude below what a
/// different batch makes (checked below). Kernel threads also change the order of sums inside
/// the convolutions, so every run here uses one thread, as each rank does.
const TOLERANCE: f32 = 1e-5;

fn fixture(tmp: &Path) -> PathBuf {
    let data = tmp.join("mnist");
    write_mnist_fixture(&data, 64);
    data
}

/// No periodic outputs; DiffAugment on, so that the comparisons also check that every part of
/// the batch draws the same augmentations on any number of ranks.
fn no_outputs() -> [&'static str; 6] {
    [
        "--sample-every",
        "0",
        "--checkpoint-every",
        "0",
        "--augment",
        "translation,cutout,color",
    ]
}

#[test]
fn two_ranks_train_what_one_process_accumulating_two_trains_and_resume_across_world_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let ds = data.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| -> PathBuf {
        let out = tmp.path().join(name);
        let mut args = tiny_train_args(ds, out.to_str().unwrap(), &no_outputs()).to_vec();
        // A flag given again replaces the tiny model's.
        for pair in extra.chunks(2) {
            match args.iter().position(|a| *a == pair[0]) {
                Some(i) => args[i + 1] = pair[1],
                None => args.extend_from_slice(pair),
            }
        }
        let o = trainer_1thread(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        out
    };
    let reference = run("accumulate2", &["--max-steps", "20", "--accumulate", "2"]);
    let reference = trained_state(&reference.join("final"));

    // Two ranks (every step checks that both hold bitwise the same weights).
    let two = tmp.path().join("two-ranks");
    let mut args = tiny_train_args(ds, two.to_str().unwrap(), &no_outputs()).to_vec();
    args.extend(["--max-steps", "20"]);
    let o = mpirun(2, &args, &[]);
    assert!(o.status.success(), "mpirun: {}", all_text(&o));
    assert!(all_text(&o).contains("MPI (2 ranks)"), "{}", all_text(&o));
    let diff = max_relative_difference(&trained_state(&two.join("final")), &reference);
    assert!(diff.0 <= TOLERANCE, "2 ranks vs --accumulate 2: {diff:?}");

    // The same seed at half the batch in one step is another run: the comparison can fail.
    let half = run("half-batch", &["--max-steps", "20", "--batch-size", "4"]);
    let diff = max_relative_difference(&trained_state(&half.join("final")), &reference);
    assert!(
        diff.0 > 1e-3,
        "half the batch should train other weights: {diff:?}"
    );

    // A 2-rank checkpoint resumed by one process accumulating 2 ...
    let a = tmp.path().join("ranks-then-one");
    let mut args = tiny_train_args(ds, a.to_str().unwrap(), &no_outputs()).to_vec();
    args.extend(["--max-steps", "10"]);
    let o = mpirun(2, &args, &[]);
    assert!(o.status.success(), "{}", all_text(&o));
    let a_dir = a.to_str().unwrap();
    let o = trainer(&[
        "train",
        "--resume",
        a_dir,
        "--max-steps",
        "20",
        "--accumulate",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let diff = max_relative_difference(&trained_state(&a.join("final")), &reference);
    assert!(diff.0 <= TOLERANCE, "2 ranks then 1 process: {diff:?}");

    // ... and an --accumulate 2 checkpoint resumed by two ranks.
    let b = run(
        "one-then-ranks",
        &["--max-steps", "10", "--accumulate", "2"],
    );
    let b_dir = b.to_str().unwrap();
    let resume = [
        "train",
        "--resume",
        b_dir,
        "--max-steps",
        "20",
        "--accumulate",
        "1",
    ];
    let o = mpirun(2, &resume, &[]);
    assert!(o.status.success(), "{}", all_text(&o));
    let diff = max_relative_difference(&trained_state(&b.join("final")), &reference);
    assert!(diff.0 <= TOLERANCE, "1 process then 2 ranks: {diff:?}");
}

/// The ResNet with the SNGAN recipe (hinge, spectral norm in D and G, 2 D steps per G step
/// here, EMA) and class-conditional (conditional BatchNorm, projection D): two ranks train what
/// one process accumulating 2 trains, as the DCGAN does above.
#[test]
fn the_conditional_resnet_trains_the_same_on_two_ranks_as_accumulating_two() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let ds = data.to_str().unwrap();
    let args = |out: &Path, extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = tiny_train_args(ds, out.to_str().unwrap(), &no_outputs())
            .iter()
            .map(|s| s.to_string())
            .collect();
        let resnet = [
            "--image-size",
            "32",
            "--g-width",
            "2",
            "--d-width",
            "4",
            "--arch",
            "resnet",
            "--preset",
            "sngan",
            "--d-steps",
            "2",
            "--max-steps",
            "6",
        ];
        for pair in resnet.chunks(2).chain(extra.chunks(2)) {
            match a.iter().position(|x| x == pair[0]) {
                Some(i) => a[i + 1] = pair[1].to_string(),
                None => a.extend(pair.iter().map(|s| s.to_string())),
            }
        }
        a.push("--conditional".into());
        a.push("--g-spectral-norm".into());
        a
    };
    let one = tmp.path().join("accumulate2");
    let a = args(&one, &["--accumulate", "2"]);
    let o = trainer_1thread(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let two = tmp.path().join("two-ranks");
    let a = args(&two, &[]);
    let o = mpirun(2, &a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(o.status.success(), "mpirun: {}", all_text(&o));
    let (x, y) = (
        trained_state(&one.join("final")),
        trained_state(&two.join("final")),
    );
    assert!(
        x.iter().any(|(name, _)| name.contains("projection")),
        "not the conditional ResNet"
    );
    let diff = max_relative_difference(&y, &x);
    assert!(
        diff.0 <= TOLERANCE,
        "ResNet, 2 ranks vs --accumulate 2: {diff:?}"
    );
    // The whole batch in one pass (BatchNorm over 8 images, not 4) trains other weights: the
    // comparison can fail.
    let whole = tmp.path().join("whole-batch");
    let a = args(&whole, &[]);
    let o = trainer_1thread(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let diff = max_relative_difference(&trained_state(&whole.join("final")), &x);
    assert!(diff.0 > 1e-3, "one pass should differ: {diff:?}");
}

/// The PID of the trainer process of `rank` writing into `out` (from /proc: its command line
/// names `out`, its environment its MPI rank).
fn pid_of_rank(out: &Path, rank: usize) -> Option<u32> {
    let want_env = format!("OMPI_COMM_WORLD_RANK={rank}");
    let out = out.to_str().unwrap();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains(out) || !cmdline.contains("--distributed") {
            return None;
        }
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .any(|v| v == want_env.as_bytes())
            .then_some(pid)
    })
}

/// A 2-rank job on the fixture that would train for ever (with `extra` flags), writing into
/// `tmp/run`, its output captured.
fn endless_job(tmp: &Path, extra: &[&str]) -> (PathBuf, std::process::Child) {
    let data = fixture(tmp);
    let out = tmp.join("run");
    let (ds, os) = (data.to_str().unwrap(), out.to_str().unwrap());
    let mut flags = vec!["--max-steps", "1000000", "--epochs", "1000000"];
    flags.extend_from_slice(extra);
    let job = mpirun_command(2, &tiny_train_args(ds, os, &flags), &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (out, job)
}

/// The output of `job` once it exits; a failure (after killing it) if it still runs `limit`
/// after `since`, when `what` happened.
fn exited_within(
    mut job: std::process::Child,
    since: Instant,
    limit: Duration,
    what: &str,
) -> Output {
    loop {
        if job.try_wait().unwrap().is_some() {
            return job.wait_with_output().unwrap();
        }
        if since.elapsed() > limit {
            job.kill().unwrap();
            panic!("the job still runs {limit:?} after {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killing_one_rank_ends_the_job_quickly_and_the_checkpoint_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, job) = endless_job(tmp.path(), &["--checkpoint-every", "5"]);
    let os = out.to_str().unwrap();
    wait_until("a checkpoint", Duration::from_secs(120), || {
        gantry_models::resolve_checkpoint(&out)
            .ok()
            .and_then(|d| Checkpoint::load(&d).ok())
            .is_some_and(|c| c.step() >= 5)
    });
    let victim = pid_of_rank(&out, 1).expect("rank 1's process");
    let killed = Instant::now();
    let status = Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status();
    assert!(status.unwrap().success());
    let o = exited_within(job, killed, Duration::from_secs(30), "rank 1 was killed");
    assert!(!o.status.success(), "the job must fail: {}", all_text(&o));
    let text = all_text(&o);
    // mpirun names the dead rank; Gantry's surviving rank says which step the launcher's
    // SIGTERM interrupted and that the last checkpoint is intact.
    assert!(text.contains("process rank 1"), "{text}");
    assert!(
        text.contains("rank 0: interrupt during step")
            && text.contains("the last checkpoint is intact"),
        "{text}"
    );
    let ckpt = Checkpoint::load(&gantry_models::resolve_checkpoint(&out).unwrap()).unwrap();
    let end = (ckpt.step() + 3).to_string();
    let o = trainer(&["train", "--resume", os, "--max-steps", &end]);
    assert!(o.status.success(), "resume after the kill: {}", stderr(&o));
}

#[test]
fn a_rank_that_diverges_drifts_disagrees_or_cannot_read_its_data_stops_the_job_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let ds = data.to_str().unwrap();
    let out = |name: &str| tmp.path().join(name);

    // Rank 1's losses become NaN at step 7: every rank stops, naming rank 1 and the step; the
    // checkpoint of step 5 is kept.
    let nan = out("nan");
    let args = tiny_train_args(
        ds,
        nan.to_str().unwrap(),
        &["--max-steps", "20", "--checkpoint-every", "5"],
    );
    let o = mpirun(2, &args, &[("GANTRY_FAULT", "nan@1:7")]);
    let text = all_text(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("at step 7 on rank 1") && text.contains("diverged"),
        "{text}"
    );
    assert_eq!(Checkpoint::load(&nan.join("checkpoint")).unwrap().step(), 5);

    // Rank 1's weights move after step 4: the replica check catches it at once.
    let drift = out("drift");
    let args = tiny_train_args(ds, drift.to_str().unwrap(), &["--max-steps", "20"]);
    let o = mpirun(2, &args, &[("GANTRY_FAULT", "drift@1:4")]);
    let text = all_text(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("after step 4 the weights of rank 1 differ"),
        "{text}"
    );

    // Different settings on the two ranks (MPMD launch): refused at start-up, nothing trained.
    let mismatch = out("mismatch");
    let os = mismatch.to_str().unwrap();
    let o = mpmd(&[
        tiny_train_args(ds, os, &["--max-steps", "5", "--seed", "0"]),
        tiny_train_args(ds, os, &["--max-steps", "5", "--seed", "1"]),
    ]);
    let text = all_text(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("rank 1 has different settings"), "{text}");
    assert!(
        !mismatch.join("metrics.jsonl").exists()
            || std::fs::read_to_string(mismatch.join("metrics.jsonl"))
                .unwrap()
                .is_empty()
    );

    // Rank 1 cannot read its data: it says which file, rank 0 says that rank 1 failed.
    let missing = tmp.path().join("nowhere");
    let unreadable = out("unreadable");
    let os = unreadable.to_str().unwrap();
    let o = mpmd(&[
        tiny_train_args(ds, os, &["--max-steps", "5"]),
        tiny_train_args(missing.to_str().unwrap(), os, &["--max-steps", "5"]),
    ]);
    let text = all_text(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("rank 1 failed at start-up") && text.contains("nowhere"),
        "{text}"
    );
}

/// `args` with each `--flag value` pair of `extra` replacing the flag's value, or appended.
fn with_flags<'a>(mut args: Vec<&'a str>, extra: &[&'a str]) -> Vec<&'a str> {
    for pair in extra.chunks(2) {
        match args.iter().position(|a| *a == pair[0]) {
            Some(i) => args[i + 1] = pair[1],
            None => args.extend_from_slice(pair),
        }
    }
    args
}

/// The BatchNorm running means of G and D in a checkpoint.
fn running_means(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let c = load(dir);
    let maps = [
        ("G.", &c.generator),
        ("D.", c.discriminator.as_ref().unwrap()),
    ];
    flat_tensors(&maps, |name| name.ends_with("running_mean"))
}

/// Each rank measures BatchNorm's running statistics on its own half of the batch; rank 0's
/// checkpoint must hold their mean over the ranks. The independent computation: with a learning
/// rate too small to move any weight (1e-30: each Adam step is below a float's resolution at
/// the weights' size), one process on the whole batch applies the same networks to the same
/// latents. G's first BatchNorm sees the latents' linear image (nothing batch-dependent before
/// it); the mean of a batch is the mean of its two halves' means and the momentum update is
/// linear, so its running mean in one process on the whole batch equals the average of the two
/// ranks' (up to summation order, within the 1e-5 tolerance). Later layers see activations
/// normalised with each half's own statistics, so they have no such identity. Rank 0's own
/// running mean (averaging left out) differs by as much as the tensor's largest value: checked
/// by mutation.
#[test]
fn batchnorm_running_means_are_averaged_over_the_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let ds = data.to_str().unwrap();
    let frozen = [
        "--max-steps",
        "6",
        "--lr",
        "1e-30",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "0",
    ];
    let one = tmp.path().join("one");
    let o = trainer_1thread(&tiny_train_args(ds, one.to_str().unwrap(), &frozen));
    assert!(o.status.success(), "{}", stderr(&o));
    let two = tmp.path().join("two");
    let o = mpirun(2, &tiny_train_args(ds, two.to_str().unwrap(), &frozen), &[]);
    assert!(o.status.success(), "mpirun: {}", all_text(&o));
    let first_bn = |dir: &Path| {
        let all = running_means(&dir.join("final"));
        assert!(all.len() >= 2, "no BatchNorm in the tiny model: {all:?}");
        all.into_iter()
            .filter(|(name, _)| name == "G.layers.0.bn.running_mean")
            .collect::<Vec<_>>()
    };
    let (whole, averaged) = (first_bn(&one), first_bn(&two));
    assert_eq!(whole.len(), 1, "G's first BatchNorm");
    // The running mean moved away from its initial zeros: the comparison means something.
    let moved = whole[0].1.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(moved > 1e-3, "running mean still ~0: {whole:?}");
    let diff = max_relative_difference(&averaged, &whole);
    assert!(
        diff.0 <= TOLERANCE,
        "2 ranks' averaged running mean vs the whole batch's: {diff:?}"
    );
}

/// A data-parallel run resumes on a world size it never had: 2 ranks for 10 steps, then 3
/// ranks (8 images cut 2/3/3) for 10 more, equal to one process accumulating 2 then 3.
#[test]
fn a_checkpoint_of_two_ranks_resumes_on_three() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(tmp.path());
    let ds = data.to_str().unwrap();
    fn first<'a>(ds: &'a str, out: &'a Path) -> Vec<&'a str> {
        let args = tiny_train_args(ds, out.to_str().unwrap(), &no_outputs());
        with_flags(args, &["--max-steps", "10"])
    }
    let resume = |out: &Path, accumulate: &'static str| -> Vec<String> {
        [
            "train",
            "--resume",
            out.to_str().unwrap(),
            "--max-steps",
            "20",
            "--accumulate",
            accumulate,
        ]
        .map(String::from)
        .to_vec()
    };
    let reference = tmp.path().join("accumulate");
    let o = trainer_1thread(&with_flags(first(ds, &reference), &["--accumulate", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let a = resume(&reference, "3");
    let o = trainer_1thread(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));

    let ranks = tmp.path().join("ranks");
    let o = mpirun(2, &first(ds, &ranks), &[]);
    assert!(o.status.success(), "{}", all_text(&o));
    let a = resume(&ranks, "1");
    let o = mpirun(3, &a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let text = all_text(&o);
    assert!(
        o.status.success() && text.contains("MPI (3 ranks)"),
        "{text}"
    );
    let (x, y) = (
        trained_state(&ranks.join("final")),
        trained_state(&reference.join("final")),
    );
    let diff = max_relative_difference(&x, &y);
    assert!(
        diff.0 <= TOLERANCE,
        "2 then 3 ranks vs accumulating 2 then 3: {diff:?}"
    );
    // Accumulating 2 throughout is another run: the comparison can fail.
    let two = tmp.path().join("accumulate-2-only");
    let o = trainer_1thread(&with_flags(
        first(ds, &two),
        &["--max-steps", "20", "--accumulate", "2"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let diff = max_relative_difference(&trained_state(&two.join("final")), &y);
    assert!(
        diff.0 > 1e-3,
        "3 parts should train other weights than 2: {diff:?}"
    );
}

/// Stopping is agreed between the ranks: SIGTERM to rank 1 alone (as a scheduler may deliver
/// it) stops both at the same step, rank 0 writes the checkpoint of that step, the job exits
/// cleanly, and the checkpoint resumes. A rank stopping alone would leave the other waiting in
/// a collective (the test would time out) or fail the job.
#[test]
fn a_stop_on_one_rank_stops_every_rank_at_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, job) = endless_job(
        tmp.path(),
        &["--checkpoint-every", "0", "--sample-every", "0"],
    );
    let os = out.to_str().unwrap();
    let log = out.join("metrics.jsonl");
    wait_until("ten steps", Duration::from_secs(120), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 10)
    });
    let victim = pid_of_rank(&out, 1).expect("rank 1's process");
    let status = Command::new("kill")
        .args(["-TERM", &victim.to_string()])
        .status();
    assert!(status.unwrap().success());
    let signalled = Instant::now();
    let o = exited_within(
        job,
        signalled,
        Duration::from_secs(60),
        "rank 1 was told to stop",
    );
    let text = all_text(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("rank 1: interrupt during step"), "{text}");
    let ckpt = Checkpoint::load(&out.join("checkpoint")).unwrap();
    let step = ckpt.step();
    assert!(
        text.contains(&format!("stopped at step {step};")),
        "the checkpoint is of step {step}: {text}"
    );
    // Rank 0 logged every step up to that one and no further.
    let logged = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(logged.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"].as_u64(), Some(step), "{logged}");
    let end = (step + 2).to_string();
    let o = trainer(&["train", "--resume", os, "--max-steps", &end]);
    assert!(o.status.success(), "resume after the stop: {}", stderr(&o));
}
