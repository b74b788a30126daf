//! A login storm, to measure (not a test): registers one account (or finds
//! it there), then fires N Logins at once at a running users-svc, each from
//! its own connection as from many clients, and prints how they ended and
//! the wall time. It starts nothing itself; `login_storm_rss.sh` next to it
//! starts the binary and reads its memory before and after.
//!
//! ```text
//! cargo run -p users-svc --example login_storm -- 127.0.0.1:50051 [N=200]
//! ```
//!
//! `LOGIN_STORM_EMAIL` and `LOGIN_STORM_PASSWORD` choose the account
//! (default `storm@example.com`, `correct horse`).

use std::{collections::BTreeMap, time::Instant};

use munity_proto::users::v1::{self as pb, users_client::UsersClient};
use tonic::{Code, transport::Channel};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: login_storm HOST:PORT [N]"))?;
    let calls: usize = args.next().map_or(Ok(200), |n| n.parse())?;
    let email = std::env::var("LOGIN_STORM_EMAIL").unwrap_or("storm@example.com".to_owned());
    let password = std::env::var("LOGIN_STORM_PASSWORD").unwrap_or("correct horse".to_owned());
    let endpoint = Channel::from_shared(format!("http://{address}"))?;

    let mut client = UsersClient::new(endpoint.connect().await?);
    match client
        .register(pb::RegisterRequest {
            email: email.clone(),
            password: password.clone(),
            display_name: "Login Storm".to_owned(),
        })
        .await
    {
        Ok(_) => println!("registered {email}"),
        Err(status) if status.code() == Code::AlreadyExists => println!("{email} exists"),
        Err(status) => anyhow::bail!("Register: {status:?}"),
    }

    // Connect first, so the calls leave together.
    let mut clients = Vec::with_capacity(calls);
    for _ in 0..calls {
        clients.push(UsersClient::new(endpoint.connect().await?));
    }
    let started = Instant::now();
    let logins = clients.into_iter().map(|mut client| {
        let request = pb::LoginRequest {
            email: email.clone(),
            password: password.clone(),
        };
        async move {
            let sent = Instant::now();
            let result = client.login(request).await;
            (result.map_err(|s| s.code()), sent.elapsed())
        }
    });
    let results = futures::future::join_all(logins).await;
    let wall = started.elapsed();

    let mut outcomes: BTreeMap<String, (usize, std::time::Duration)> = BTreeMap::new();
    for (result, took) in results {
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(Code::ResourceExhausted) => "refused (RESOURCE_EXHAUSTED)".to_owned(),
            Err(code) => format!("{code:?}"),
        };
        let entry = outcomes.entry(outcome).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(took);
    }
    println!("{calls} concurrent Logins in {:.2} s", wall.as_secs_f64());
    for (outcome, (count, slowest)) in outcomes {
        println!(
            "  {outcome}: {count} (slowest {:.2} s)",
            slowest.as_secs_f64()
        );
    }
    Ok(())
}
