//! The web app end to end: `munity dev` (a real process) serves `web/dist`
//! from its gateway, and Debian's headless Chromium, driven by
//! playwright-core (`web/tests/e2e.mjs`), plays the main story as three
//! users in their own browser contexts: register (a bad email first),
//! create and join a community, propose a meeting with capacity 1, see it
//! appear and the votes change live, close voting, join, and be refused
//! when full; the sixth Login in a minute told when to retry; offline with
//! the last state kept and changes refused while the owner edits the meeting
//! and proposes another, then back with both changes and each missed
//! notification once (the kept offsets checked); the owner cancels a meeting,
//! seen live; inbox, feed, reload, the admin's activity charts, sign out; axe-core
//! on every screen. Screenshots of each screen go to a temporary directory
//! (`MUNITY_WEB_SHOTS` keeps them elsewhere).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_plan_a_meeting_in_the_browser() {
    let Some(chromium) = munity_testkit::chromium() else {
        eprintln!("skipped: no Chromium (apt-get install chromium)");
        return;
    };
    let web = web_dir();
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "web/node_modules is missing: run `npm ci --prefix web` (scripts/test.sh does)"
    );
    let data = tempfile::tempdir().unwrap();
    let (ready, _channel) =
        munity_testkit::start_dev(env!("CARGO_BIN_EXE_munity"), data.path()).await;
    let base = format!("http://{}", ready.address("gateway"));
    let kept = std::env::var("MUNITY_WEB_SHOTS").ok();
    let shots_dir = tempfile::tempdir().unwrap();
    let shots = kept
        .map(PathBuf::from)
        .unwrap_or_else(|| shots_dir.path().to_owned());

    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("tests/e2e.mjs")
            .args(["--base", &base, "--shots"])
            .arg(&shots)
            .args(["--admin-email", munity_testkit::ADMIN_EMAIL])
            .env("CHROMIUM", chromium)
            .current_dir(web_dir())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run node ({e}); node 20+ must be on PATH"))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "web/tests/e2e.mjs failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    print!("{stdout}");
    assert!(stdout.contains("passed, 0 failed"), "{stdout}");
    drop(ready);
}
