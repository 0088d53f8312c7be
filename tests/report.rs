//! `h2e merge` (shard reports back into the unsharded report) and the HTML
//! report (`h2e filter --html`, `h2e report`), checked in headless
//! Chromium when it is installed.

mod common;

use burn::tensor::Device;
use h2e::identifier::Identifier;
use h2e::progress::Silent;
use h2e::report::read_report;
use h2e::train::{Engine, Method, TrainConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A quickly trained identifier for 8x8 images with a bright band at the
/// top, middle or bottom, saved at `path`.
fn train_identifier(path: &Path) {
    let set = common::bands(5, 16);
    let cfg =
        TrainConfig { method: Method::Ce, epochs: 2, batch_size: 16, rounds: 1, seed: 1, ..TrainConfig::default() };
    let trained = Engine::new(Device::flex(), cfg, &set, &Silent).unwrap().run(&set, None, "test").unwrap();
    Identifier::from_trained(trained, &set, Device::flex()).unwrap().save(path).unwrap();
}

/// `root/{top,middle,bottom}` with 5, 4 and 3 PNGs, a path that needs CSV
/// quoting and HTML escaping, and a corrupt PNG: 14 samples.
fn folder(root: &Path) -> usize {
    common::folder(root, &[("top", 5), ("middle", 4), ("bottom", 3)]);
    std::fs::write(root.join("middle/a,b \"q\" <&>.png"), common::png(8, 8, 3, 99)).unwrap();
    std::fs::write(root.join("bottom/bad.png"), b"\x89PNG broken").unwrap();
    14
}

fn h2e(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_h2e")).args(args).output().expect("run h2e");
    assert!(o.status.success(), "h2e {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn merged_shard_reports_equal_the_unsharded_report() {
    let t = tempfile::tempdir().unwrap();
    let (id, data) = (t.path().join("id.zip"), t.path().join("data"));
    train_identifier(&id);
    let n = folder(&data);
    // Per-sample flags (argmax rule, no caps); batches of one so every
    // sample is scored by the same computation in every run.
    let run = |out: &Path, shard: &str| {
        let base = [
            "filter",
            s(&id),
            s(&data),
            "--device",
            "cpu",
            "--operating-point",
            "argmax",
            "--min-per-class",
            "0",
            "--batch-size",
            "1",
        ];
        h2e(&[&base[..], &["--shard", shard, "--report", s(out)]].concat());
    };
    let whole = t.path().join("whole.csv");
    run(&whole, "0/1");
    let shards: Vec<PathBuf> = (0..3).map(|k| t.path().join(format!("shard{k}.csv"))).collect();
    for (k, p) in shards.iter().enumerate() {
        run(p, &format!("{k}/3"));
    }
    let expected = std::fs::read_to_string(&whole).unwrap();
    assert_eq!(expected.lines().count(), 1 + n);
    assert!(expected.contains("\"middle/a,b \"\"q\"\" <&>.png\"") && expected.contains("bottom/bad.png"));
    let lens: Vec<usize> = shards.iter().map(|p| std::fs::read_to_string(p).unwrap().lines().count() - 1).collect();
    assert_eq!(lens, [5, 5, 4]);

    let merged = t.path().join("merged.csv");
    let args: Vec<&str> = ["merge"].into_iter().chain(shards.iter().map(|p| s(p))).chain(["-o", s(&merged)]).collect();
    let o = h2e(&args);
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("3 shards, {n} samples")));
    assert_eq!(std::fs::read_to_string(&merged).unwrap(), expected, "byte for byte");
    // JSON lines too, and they parse back to the same rows.
    let jsonl = t.path().join("merged.jsonl");
    h2e(&[&args[..args.len() - 1], &[s(&jsonl)]].concat());
    let (a, b) = (read_report(&jsonl).unwrap(), read_report(&whole).unwrap());
    assert_eq!(a.rows, b.rows);

    // Out of order, a repeated file or a non-report is refused.
    let fails = |c: &mut Command, what: &str| {
        let o = c.output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(what), "{e}");
    };
    fails(
        Command::new(env!("CARGO_BIN_EXE_h2e")).args([
            "merge",
            s(&shards[2]),
            s(&shards[0]),
            s(&shards[1]),
            "-o",
            s(&merged),
        ]),
        "shard order",
    );
    fails(
        Command::new(env!("CARGO_BIN_EXE_h2e")).args(["merge", s(&shards[0]), s(&shards[0]), "-o", s(&merged)]),
        "twice",
    );
    fails(Command::new(env!("CARGO_BIN_EXE_h2e")).args(["merge", s(&id), "-o", s(&merged)]), "cannot read report");
    assert_eq!(std::fs::read_to_string(&merged).unwrap(), expected, "a failed merge leaves the output alone");
}

/// Kills a child that runs past `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start chromium");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().unwrap();
            panic!("chromium ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn chromium(page: &Path, profile: &Path, extra: &[&str]) -> Output {
    let mut c = Command::new("/usr/bin/chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1200,1600",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("file://{}", page.display()));
    output_within(c, Duration::from_secs(120))
}

/// Decodes standard base64 (what the page embeds).
fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| {
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".bytes().position(|a| a == c).unwrap() as u32
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let data: Vec<u32> = chunk.iter().filter(|&&c| c != b'=').map(|&c| val(c)).collect();
        let n = data.iter().enumerate().fold(0u32, |n, (i, v)| n | v << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..data.len()]);
    }
    out
}

#[test]
fn the_html_report_is_self_contained_and_renders() {
    let t = tempfile::tempdir().unwrap();
    let (id, data) = (t.path().join("id.zip"), t.path().join("data"));
    train_identifier(&id);
    let n = folder(&data) + 2;
    common::folder(&data, &[("<i>x&y", 2)]); // a class the identifier does not know, with markup in its name
    let (html, jsonl) = (t.path().join("report.html"), t.path().join("report.jsonl"));
    let o = h2e(&[
        "filter",
        s(&id),
        s(&data),
        "--device",
        "cpu",
        "--threshold",
        "0.5",
        "--min-per-class",
        "0",
        "--unknown-class",
        "skip",
        "--jsonl",
        s(&jsonl),
        "--html",
        s(&html),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("wrote {}", html.display())));
    let page = std::fs::read_to_string(&html).unwrap();
    let report = read_report(&jsonl).unwrap();
    assert_eq!(report.rows.len(), n);

    // Every scored sample of these small classes gets a thumbnail (top 8 of 5, 5, 3).
    let scored = report.rows.iter().filter(|r| r.error.is_none()).count();
    assert_eq!(scored, n - 3);
    assert_eq!(page.matches("<figure class=\"thumb").count(), scored);
    assert_eq!(page.matches("src=\"data:image/png;base64,").count(), scored);
    assert_eq!(page.matches("<figure class=\"thumb flagged\"").count(), report.flagged());
    // Self-contained and escaped.
    assert!(!page.contains("http") && !page.contains("url(") && !page.contains("<link"), "external reference");
    assert!(page.contains("&lt;i&gt;x&amp;y") && !page.contains("<i>x&y"));
    assert!(page.contains("a,b &quot;q&quot; &lt;&amp;&gt;.png"));
    assert!(page.contains("<svg class=\"bars\"") && page.contains("Errors") && page.contains("bad.png"));
    // The first thumbnail is a PNG of one of the folder's images (8x8 or 10x6).
    let start = page.find("data:image/png;base64,").unwrap() + "data:image/png;base64,".len();
    let b64 = &page[start..start + page[start..].find('"').unwrap()];
    let thumb = image::load_from_memory(&unbase64(b64)).unwrap();
    assert!([(8, 8), (10, 6)].contains(&(thumb.width(), thumb.height())), "{}x{}", thumb.width(), thumb.height());

    // `h2e report` renders the same page from the JSONL report.
    let again = t.path().join("again.html");
    h2e(&["report", s(&jsonl), s(&data), "-o", s(&again)]);
    assert_eq!(std::fs::read_to_string(&again).unwrap(), page);

    let browser = Path::new("/usr/bin/chromium");
    if !browser.exists() {
        eprintln!("SKIPPED the browser check: /usr/bin/chromium is not installed (apt-get install chromium)");
        return;
    }
    let profile = tempfile::tempdir().unwrap();
    // The DOM after the page's script ran: it counted the thumbnails.
    let dom = chromium(&html, profile.path(), &["--dump-dom"]);
    let (dom_out, dom_err) = (String::from_utf8_lossy(&dom.stdout), String::from_utf8_lossy(&dom.stderr));
    assert!(dom.status.success(), "{dom_err}");
    assert!(
        dom_out.contains(&format!("data-thumbs=\"{scored}\"")) && dom_out.contains(&format!("{scored} thumbnails")),
        "{dom_out}"
    );
    let shot = t.path().join("shot.png");
    let o = chromium(&html, profile.path(), &[&format!("--screenshot={}", shot.display())]);
    let err = String::from_utf8_lossy(&o.stderr);
    // H2E_KEEP_SCREENSHOT=DIR keeps the page and its screenshot for a look.
    if let Ok(dir) = std::env::var("H2E_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, Path::new(&dir).join("report-shot.png")).unwrap();
        std::fs::copy(&html, Path::new(&dir).join("report.html")).unwrap();
    }
    assert!(o.status.success(), "{err}");
    for e in [&dom_err, &err] {
        assert!(!e.contains("Uncaught") && !e.contains(":CONSOLE("), "page errors:\n{e}");
    }
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (1200, 1600));
    let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    colours.sort();
    colours.dedup();
    assert!(colours.len() > 50, "a nearly blank screenshot: {} colours", colours.len());
    // The bars are on screen: kept, flagged and error colours, each as
    // much as its legend swatch (12x12) plus a bar where there are such samples.
    let near = |c: [u8; 3]| img.pixels().filter(|p| p.0.iter().zip(c).all(|(&a, b)| a.abs_diff(b) <= 6)).count();
    let kept = report.rows.iter().filter(|r| r.error.is_none() && !r.is_label_issue).count();
    for (colour, count, what) in
        [([0x8f, 0xbf, 0x94], kept, "kept"), ([0xd9, 0x53, 0x4f], report.flagged(), "flagged"), ([0xaa; 3], 3, "error")]
    {
        let want = if count > 0 { 1000 } else { 100 };
        assert!(near(colour) > want, "{what}: {} pixels of its colour, {count} such samples", near(colour));
    }
}
