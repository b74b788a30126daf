//! Two `discuss-svc` processes sharing a Cassandra keyspace and the Redis
//! event log, beside users-svc (in this process, publishing its member
//! events on the same log). A post made on one replica is read on the
//! other, and found by search on both (each replica indexes the whole log
//! itself); an outsider finds nothing and reads nothing; the post's
//! mentions reach the log as one event naming the mentioned member only
//! (not the author, not the outsider), and a comment's mention by display
//! name made on the other replica names that member. Removed on one
//! replica, the post is no longer found on the other.

use std::{process::Command, time::Duration};

use munity_bus::membership::CqlMemberships;
use munity_platform::{
    auth::{AuthConfig, with_bearer},
    config::{BusBackend, BusConfig},
};
use munity_proto::{
    discuss::v1::{self as pb, discuss_client::DiscussClient},
    users::v1::{self as users_pb, users_client::UsersClient},
};
use prost::Message;
use tonic::{Code, transport::Channel};
use uuid::Uuid;

fn replica(
    cql: &munity_platform::config::CqlConfig,
    redis: &str,
    stream: &str,
    users: &str,
    dir: &std::path::Path,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_discuss-svc"));
    command
        .env("MUNITY_DISCUSS__LISTEN", "127.0.0.1:0")
        .env("MUNITY_DISCUSS__STORAGE__BACKEND", "cql")
        .env(
            "MUNITY_DISCUSS__STORAGE__NODES",
            format!("[{}]", cql.nodes.join(",")),
        )
        .env("MUNITY_DISCUSS__STORAGE__KEYSPACE", &cql.keyspace)
        .env("MUNITY_DISCUSS__STORAGE__REQUEST_TIMEOUT_MS", "20000")
        .env("MUNITY_BUS__BACKEND", "redis")
        .env("MUNITY_BUS__REDIS_URL", redis)
        .env("MUNITY_BUS__REDIS_KEY", stream)
        .env("MUNITY_AUTH__JWKS_URL", users)
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdout(std::process::Stdio::null());
    command
}

/// Polls `probe` every 50 ms until it yields, for at most 30 s (the
/// membership view and the search index follow the log, a relay's delay
/// behind). A deadline, not a timed assert: it only bounds a failing run.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: not within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn search(client: &mut DiscussClient<Channel>, token: &str, query: &str) -> Vec<String> {
    client
        .search_posts(with_bearer(
            pb::SearchPostsRequest {
                query: query.to_owned(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .posts
        .into_iter()
        .map(|p| p.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_made_on_one_replica_is_read_and_searched_on_the_other() {
    let Some(redis) = std::env::var("MUNITY_TEST_REDIS")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            !munity_testkit::in_ci(),
            "MUNITY_TEST_REDIS is required under CI=true"
        );
        return;
    };
    let Some(cql) = munity_testkit::cql_config("discuss_scale") else {
        return;
    };
    let run = Uuid::now_v7().simple().to_string();
    let stream = format!("munity:test:discuss-scale:{run}:log");
    let dir = tempfile::tempdir().unwrap();
    let redis_bus = BusConfig {
        backend: BusBackend::Redis,
        redis_url: redis.clone(),
        redis_key: stream.clone(),
        ..Default::default()
    };
    // users-svc publishes memberships on the replicas' log.
    let (users, _users) = munity_testkit::serve_in_process::<users_svc::UsersService>(
        Default::default(),
        &dir.path().join("users"),
        redis_bus.clone(),
        AuthConfig::default(),
    )
    .await;
    let mut replicas = Vec::new();
    {
        let _schema = munity_testkit::schema_lock().await;
        for name in ["a", "b"] {
            let dir = dir.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let command = replica(&cql, &redis, &stream, &users, &dir);
            replicas.push(munity_testkit::spawn_ready(command, Duration::from_secs(60)).await);
        }
    }
    let client =
        |i: usize| DiscussClient::connect(format!("http://{}", replicas[i].address("discuss")));
    let (mut a, mut b) = (client(0).await.unwrap(), client(1).await.unwrap());

    let users_channel = Channel::from_shared(users.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (alice, alice_id) = munity_testkit::register(&users_channel, "Alice").await;
    let (bob, bob_id) = munity_testkit::register(&users_channel, "Bob").await;
    let (carol, carol_id) = munity_testkit::register(&users_channel, "Carol").await;
    let mut users_client = UsersClient::new(users_channel.clone());
    let community = users_client
        .create_community(with_bearer(
            users_pb::CreateCommunityRequest {
                name: "Allotment".to_owned(),
                description: String::new(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    users_client
        .join_community(with_bearer(
            users_pb::JoinCommunityRequest {
                community_id: community.clone(),
            },
            &bob,
        ))
        .await
        .unwrap();

    // Alice posts on a, once a's membership view has her (and Bob: the
    // view is one, in the shared keyspace, kept by either replica).
    let body = format!(
        "Seed swap on Saturday at the Greenhouse, bring tomatoes! @{bob_id} @{carol_id} @{alice_id}"
    );
    let post = eventually("Alice a member at replica a", || {
        let (mut a, body, alice, community) =
            (a.clone(), body.clone(), alice.clone(), community.clone());
        async move {
            let created = a
                .create_post(with_bearer(
                    pb::CreatePostRequest {
                        community_id: community,
                        body,
                    },
                    &alice,
                ))
                .await;
            match created {
                Ok(post) => Some(post.into_inner()),
                Err(status) if status.code() == Code::NotFound => None,
                Err(status) => panic!("{status:?}"),
            }
        }
    })
    .await;
    eventually("Bob a member at replica b", || {
        let (mut b, bob, id) = (b.clone(), bob.clone(), post.id.clone());
        async move {
            b.get_post(with_bearer(pb::GetPostRequest { post_id: id }, &bob))
                .await
                .ok()
        }
    })
    .await;

    // Read on b, as written on a.
    let read = b
        .get_post(with_bearer(
            pb::GetPostRequest {
                post_id: post.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.body, body);
    assert_eq!(read.author_id, alice_id);

    // Found on both replicas (each indexed the log itself), case and
    // accents aside, every word required.
    for (replica, token) in [(&a, &bob), (&b, &alice), (&b, &bob)] {
        let found = eventually("the post searchable", || {
            let (mut client, token) = (replica.clone(), token.clone());
            async move {
                let hits = search(&mut client, &token, "GREENHOUSE tomatoes").await;
                (!hits.is_empty()).then_some(hits)
            }
        })
        .await;
        assert_eq!(found, vec![post.id.clone()]);
    }
    assert_eq!(
        search(&mut b, &bob, "tomatoes potatoes").await,
        Vec::<String>::new()
    );
    // The outsider: nothing found, nothing read.
    assert_eq!(
        search(&mut b, &carol, "greenhouse").await,
        Vec::<String>::new()
    );
    let refused = b
        .get_post(with_bearer(
            pb::GetPostRequest {
                post_id: post.id.clone(),
            },
            &carol,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);

    // The mentions on the log: Bob only (Carol is no member, Alice wrote it).
    let log = munity_bus::open(&redis_bus).await.unwrap();
    let mut reader = log.read_from(0).await.unwrap();
    let started = std::time::Instant::now();
    let mentioned = loop {
        let found = reader
            .next(500, Duration::from_millis(100))
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.event.r#type == "munity.discuss.v1.MembersMentioned");
        if let Some(delivery) = found {
            break pb::MembersMentioned::decode(delivery.event.payload.as_slice()).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no mention on the log within 30 s"
        );
    };
    assert_eq!(mentioned.post_id, post.id);
    assert_eq!(mentioned.user_ids, vec![bob_id.clone()]);
    assert_eq!(mentioned.by, alice_id);

    // By display name, on the other replica: "@bob" names Bob, once the
    // view in the shared keyspace holds his name (users-svc's
    // ProfileChanged, applied by either replica); Carol's name is known,
    // but she is no member.
    let view = {
        let _schema = munity_testkit::schema_lock().await;
        let store = munity_store::cql::CqlStore::connect(&cql, &[])
            .await
            .unwrap();
        CqlMemberships::prepare(std::sync::Arc::new(store))
            .await
            .unwrap()
    };
    let bob_uuid = Uuid::parse_str(&bob_id).unwrap();
    eventually("Bob's display name in the view", || {
        let view = view.clone();
        async move { view.display_name(bob_uuid).await.unwrap() }
    })
    .await;
    let thanks = b
        .create_comment(with_bearer(
            pb::CreateCommentRequest {
                post_id: post.id.clone(),
                parent_id: String::new(),
                body: "Thanks @bob! And @Carol.".to_owned(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    let by_name = loop {
        let found = reader
            .next(500, Duration::from_millis(100))
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.event.r#type == "munity.discuss.v1.MembersMentioned")
            .map(|d| pb::MembersMentioned::decode(d.event.payload.as_slice()).unwrap())
            .find(|m| m.comment_id == thanks.id);
        if let Some(mentioned) = found {
            break mentioned;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no mention by name on the log within 30 s"
        );
    };
    assert_eq!(by_name.user_ids, vec![bob_id.clone()]);

    // Removed on b: not found on a any more (at once, since hits are read
    // back from the store, and later from the index itself).
    b.delete_post(with_bearer(
        pb::DeletePostRequest {
            post_id: post.id.clone(),
        },
        &alice,
    ))
    .await
    .unwrap();
    assert_eq!(
        search(&mut a, &bob, "greenhouse").await,
        Vec::<String>::new()
    );

    // Bad input: a clear INVALID_ARGUMENT.
    let too_long = a
        .search_posts(with_bearer(
            pb::SearchPostsRequest {
                query: "x".repeat(201),
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);
    let bad_token = a
        .search_posts(with_bearer(
            pb::SearchPostsRequest {
                query: "seed".to_owned(),
                page_token: "nonsense".to_owned(),
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
}
