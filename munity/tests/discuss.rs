//! The discussion story end to end, through `munity dev`'s gateway (a real
//! process): members post, comment, reply and react; an outsider gets
//! NOT_FOUND on every read and write of the community's posts; a post in a
//! moderated community waits for approval and reaches the feed once
//! approved (or is rejected with a reason); three reports hide a post; a
//! member mentioned in a comment is told in their inbox; mentions by
//! display name tell exactly the members they name (on their `user:` topic
//! and in their inbox), a held post's once it is approved, once.

use std::{path::Path, time::Duration};

use munity_platform::auth::with_bearer;
use munity_proto::{
    discuss::v1::{self as pb, discuss_client::DiscussClient},
    notify::v1::{self as notify, notify_client::NotifyClient, subscribe_response::Message},
    users::v1::{self as users, users_client::UsersClient},
};
use munity_testkit::{Ready, register};
use prost::Message as _;
use tonic::{Code, transport::Channel};

async fn start(data_dir: &Path) -> (Ready, Channel) {
    munity_testkit::start_dev(env!("CARGO_BIN_EXE_munity"), data_dir).await
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// discuss-svc through the gateway, as one user.
#[derive(Clone)]
struct As {
    client: DiscussClient<Channel>,
    token: String,
}

impl As {
    fn new(channel: &Channel, token: &str) -> Self {
        As {
            client: DiscussClient::new(channel.clone()),
            token: token.to_owned(),
        }
    }

    fn r<T>(&self, message: T) -> tonic::Request<T> {
        with_bearer(message, &self.token)
    }

    async fn post(&self, community: &str, body: &str) -> Result<pb::Post, tonic::Status> {
        let request = self.r(pb::CreatePostRequest {
            community_id: community.to_owned(),
            body: body.to_owned(),
        });
        Ok(self.client.clone().create_post(request).await?.into_inner())
    }

    async fn get(&self, post: &str) -> Result<pb::Post, tonic::Status> {
        let request = self.r(pb::GetPostRequest {
            post_id: post.to_owned(),
        });
        Ok(self.client.clone().get_post(request).await?.into_inner())
    }

    async fn feed(&self, community: &str) -> Result<pb::ListPostsResponse, tonic::Status> {
        let request = self.r(pb::ListPostsRequest {
            community_id: community.to_owned(),
            page_size: 0,
            page_token: String::new(),
        });
        Ok(self.client.clone().list_posts(request).await?.into_inner())
    }

    async fn feed_ids(&self, community: &str) -> Vec<String> {
        let feed = self.feed(community).await.unwrap();
        feed.posts.into_iter().map(|p| p.id).collect()
    }

    async fn comment(
        &self,
        post: &str,
        parent: &str,
        body: &str,
    ) -> Result<pb::Comment, tonic::Status> {
        let request = self.r(pb::CreateCommentRequest {
            post_id: post.to_owned(),
            parent_id: parent.to_owned(),
            body: body.to_owned(),
        });
        Ok(self
            .client
            .clone()
            .create_comment(request)
            .await?
            .into_inner())
    }

    fn react_request(
        &self,
        post: &str,
        kind: pb::ReactionKind,
    ) -> tonic::Request<pb::ReactRequest> {
        self.r(pb::ReactRequest {
            post_id: post.to_owned(),
            comment_id: String::new(),
            kind: kind as i32,
        })
    }

    async fn react(
        &self,
        post: &str,
        kind: pb::ReactionKind,
    ) -> Result<pb::Reactions, tonic::Status> {
        let request = self.react_request(post, kind);
        Ok(self.client.clone().react(request).await?.into_inner())
    }

    async fn report(&self, post: &str) -> Result<pb::ReportPostResponse, tonic::Status> {
        let request = self.r(pb::ReportPostRequest {
            post_id: post.to_owned(),
            reason: "spam".to_owned(),
        });
        Ok(self.client.clone().report_post(request).await?.into_inner())
    }

    async fn queue(&self, community: &str) -> Result<Vec<String>, tonic::Status> {
        let request = self.r(pb::ListModerationQueueRequest {
            community_id: community.to_owned(),
            page_size: 0,
            page_token: String::new(),
        });
        let queue = self.client.clone().list_moderation_queue(request).await?;
        Ok(queue.into_inner().posts.into_iter().map(|p| p.id).collect())
    }

    async fn settings(
        &self,
        community: &str,
        requires_approval: bool,
    ) -> Result<(), tonic::Status> {
        let request = self.r(pb::SetCommunitySettingsRequest {
            community_id: community.to_owned(),
            requires_approval,
        });
        self.client.clone().set_community_settings(request).await?;
        Ok(())
    }

    /// Waits until discuss-svc's membership view knows this user is in
    /// `community` (it follows users-svc's events: moments).
    async fn wait_member(&self, community: &str) {
        let started = std::time::Instant::now();
        loop {
            let request = self.r(pb::GetCommunitySettingsRequest {
                community_id: community.to_owned(),
            });
            match self.client.clone().get_community_settings(request).await {
                Ok(_) => return,
                Err(status) if status.code() == Code::NotFound => {
                    assert!(started.elapsed() < Duration::from_secs(15), "{status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        }
    }
}

fn count(reactions: &Option<pb::Reactions>, kind: pb::ReactionKind) -> u32 {
    reactions
        .as_ref()
        .and_then(|r| r.counts.iter().find(|c| c.kind == kind as i32))
        .map_or(0, |c| c.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_discuss_outsiders_see_nothing_and_moderators_moderate_through_the_gateway() {
    let data = tempfile::tempdir().unwrap();
    let (ready, channel) = start(data.path()).await;
    let (alice_token, _) = register(&channel, "alice").await;
    let (bob_token, bob_id) = register(&channel, "bob").await;
    let (dave_token, _) = register(&channel, "dave").await;
    let (carol_token, _) = register(&channel, "carol").await;
    let (alice, bob, dave, carol) = (
        As::new(&channel, &alice_token),
        As::new(&channel, &bob_token),
        As::new(&channel, &dave_token),
        As::new(&channel, &carol_token),
    );

    // Alice owns the community (she moderates); Bob and Dave join; Carol
    // stays outside.
    let mut users_client = UsersClient::new(channel.clone());
    let community = users_client
        .create_community(with_bearer(
            users::CreateCommunityRequest {
                name: "Gardeners".to_owned(),
                description: String::new(),
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    for token in [&bob_token, &dave_token] {
        users_client
            .join_community(with_bearer(
                users::JoinCommunityRequest {
                    community_id: community.clone(),
                },
                token,
            ))
            .await
            .unwrap();
    }
    for member in [&alice, &bob, &dave] {
        member.wait_member(&community).await;
    }

    // A post in the markdown subset: rendered safe.
    let post = alice
        .post(
            &community,
            "**Welcome** to [our site](https://example.org) <script>alert(1)</script>",
        )
        .await
        .unwrap();
    assert_eq!(post.status, pb::PostStatus::Published as i32);
    assert!(post.body_html.contains("<strong>Welcome</strong>"));
    assert!(post.body_html.contains("<a href=\"https://example.org\""));
    assert!(post.body_html.contains("&lt;script&gt;"));
    assert!(!post.body_html.contains("<script>"));
    let refused = alice.post(&community, "[x](javascript:alert(1))").await;
    assert_eq!(code(refused), Code::InvalidArgument);

    // Comment, reply, reactions (a second like is a no-op).
    let comment = bob.comment(&post.id, "", "Thanks!").await.unwrap();
    let reply = alice
        .comment(&post.id, &comment.id, "You're *welcome*")
        .await
        .unwrap();
    assert_eq!(reply.parent_id, comment.id);
    let stray = alice.comment(&post.id, &post.id, "to nowhere").await;
    assert_eq!(code(stray), Code::InvalidArgument);
    bob.react(&post.id, pb::ReactionKind::Like).await.unwrap();
    let again = bob.react(&post.id, pb::ReactionKind::Like).await.unwrap();
    assert_eq!(again.counts.len(), 1);
    assert_eq!(again.counts[0].count, 1);
    dave.react(&post.id, pb::ReactionKind::Like).await.unwrap();
    alice.react(&post.id, pb::ReactionKind::Love).await.unwrap();
    let seen = bob.get(&post.id).await.unwrap();
    assert_eq!(count(&seen.reactions, pb::ReactionKind::Like), 2);
    assert_eq!(count(&seen.reactions, pb::ReactionKind::Love), 1);
    assert_eq!(
        seen.reactions.unwrap().mine,
        [pb::ReactionKind::Like as i32]
    );
    assert_eq!(seen.comment_count, 2);
    let comments = bob
        .client
        .clone()
        .list_comments(bob.r(pb::ListCommentsRequest {
            post_id: post.id.clone(),
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .comments;
    assert_eq!(
        comments.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        [comment.id.clone(), reply.id.clone()]
    );

    // Only the author edits; the edit time shows.
    let edit = |who: &As, body: &str| {
        let (who, request) = (
            who.clone(),
            who.r(pb::EditPostRequest {
                post_id: post.id.clone(),
                body: body.to_owned(),
            }),
        );
        async move { who.client.clone().edit_post(request).await }
    };
    assert_eq!(code(edit(&bob, "mine now").await), Code::PermissionDenied);
    let edited = edit(&alice, "**Welcome**, gardeners")
        .await
        .unwrap()
        .into_inner();
    assert!(edited.edited_at.is_some());
    assert_eq!(edited.body, "**Welcome**, gardeners");

    // Carol, outside the community: NOT_FOUND on every read and write.
    let id = || post.id.clone();
    let cid = || community.clone();
    let c = carol.clone();
    let mut d = carol.client.clone();
    let outsider = [
        ("GetPost", code(c.get(&id()).await)),
        ("CreatePost", code(c.post(&cid(), "hello?").await)),
        ("ListPosts", code(c.feed(&cid()).await)),
        ("EditPost", code(edit(&carol, "x").await)),
        (
            "DeletePost",
            code(
                d.delete_post(c.r(pb::DeletePostRequest { post_id: id() }))
                    .await,
            ),
        ),
        (
            "PinPost",
            code(d.pin_post(c.r(pb::PinPostRequest { post_id: id() })).await),
        ),
        (
            "UnpinPost",
            code(
                d.unpin_post(c.r(pb::PinPostRequest { post_id: id() }))
                    .await,
            ),
        ),
        ("CreateComment", code(c.comment(&id(), "", "hi").await)),
        (
            "ListComments",
            code(
                d.list_comments(c.r(pb::ListCommentsRequest {
                    post_id: id(),
                    page_size: 0,
                    page_token: String::new(),
                }))
                .await,
            ),
        ),
        ("React", code(c.react(&id(), pb::ReactionKind::Like).await)),
        (
            "Unreact",
            code(
                d.unreact(c.react_request(&id(), pb::ReactionKind::Like))
                    .await,
            ),
        ),
        ("ReportPost", code(c.report(&id()).await)),
        ("ListModerationQueue", code(c.queue(&cid()).await)),
        (
            "ApprovePost",
            code(
                d.approve_post(c.r(pb::ApprovePostRequest { post_id: id() }))
                    .await,
            ),
        ),
        (
            "RejectPost",
            code(
                d.reject_post(c.r(pb::RejectPostRequest {
                    post_id: id(),
                    reason: "no".to_owned(),
                }))
                .await,
            ),
        ),
        (
            "SharePost",
            code(
                d.share_post(c.r(pb::SharePostRequest {
                    post_id: id(),
                    community_id: cid(),
                    user_id: String::new(),
                    body: String::new(),
                }))
                .await,
            ),
        ),
        ("SetCommunitySettings", code(c.settings(&cid(), true).await)),
        (
            "GetCommunitySettings",
            code(
                d.get_community_settings(c.r(pb::GetCommunitySettingsRequest {
                    community_id: cid(),
                }))
                .await,
            ),
        ),
    ];
    for (method, code) in outsider {
        assert_eq!(code, Code::NotFound, "{method} for an outsider");
    }
    let carols_feed = d
        .my_feed(c.r(pb::MyFeedRequest {
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(carols_feed.posts.is_empty());
    // Nothing she tried changed anything.
    let unchanged = bob.get(&post.id).await.unwrap();
    assert_eq!(unchanged.body, edited.body);
    assert_eq!(count(&unchanged.reactions, pb::ReactionKind::Like), 2);

    // Moderators pin; the pinned post shows above the feed.
    let mut bd = bob.client.clone();
    let pin = bd
        .pin_post(bob.r(pb::PinPostRequest { post_id: id() }))
        .await;
    assert_eq!(code(pin), Code::PermissionDenied);
    let pinned = alice
        .client
        .clone()
        .pin_post(alice.r(pb::PinPostRequest { post_id: id() }))
        .await
        .unwrap()
        .into_inner();
    assert!(pinned.pinned);
    let second = dave.post(&community, "Seeds to swap").await.unwrap();
    let feed = bob.feed(&community).await.unwrap();
    assert_eq!(
        feed.pinned.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&post.id)
    );
    assert_eq!(
        feed.posts.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&second.id)
    );

    // A moderated community: Bob's post waits for approval, reaches the
    // feed once approved; another is rejected with a reason.
    assert_eq!(
        code(bob.settings(&community, true).await),
        Code::PermissionDenied
    );
    alice.settings(&community, true).await.unwrap();
    let held = bob.post(&community, "My tomatoes").await.unwrap();
    assert_eq!(held.status, pb::PostStatus::Pending as i32);
    assert!(!dave.feed_ids(&community).await.contains(&held.id));
    assert_eq!(code(dave.get(&held.id).await), Code::NotFound);
    assert_eq!(code(bob.queue(&community).await), Code::PermissionDenied);
    assert_eq!(
        alice.queue(&community).await.unwrap(),
        std::slice::from_ref(&held.id)
    );
    let approved = alice
        .client
        .clone()
        .approve_post(alice.r(pb::ApprovePostRequest {
            post_id: held.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.status, pb::PostStatus::Published as i32);
    assert_eq!(dave.feed_ids(&community).await[0], held.id);
    assert!(alice.queue(&community).await.unwrap().is_empty());
    let off_topic = bob.post(&community, "Buy my car").await.unwrap();
    alice
        .client
        .clone()
        .reject_post(alice.r(pb::RejectPostRequest {
            post_id: off_topic.id.clone(),
            reason: "off topic".to_owned(),
        }))
        .await
        .unwrap();
    let rejected = bob.get(&off_topic.id).await.unwrap();
    assert_eq!(rejected.status, pb::PostStatus::Rejected as i32);
    assert_eq!(rejected.reason, "off topic");
    assert!(!dave.feed_ids(&community).await.contains(&off_topic.id));
    alice.settings(&community, false).await.unwrap();

    // Three members report Dave's post: it is hidden pending review.
    let first = bob.report(&second.id).await.unwrap();
    assert_eq!((first.reports, first.hidden), (1, false));
    let again = bob.report(&second.id).await.unwrap();
    assert_eq!(again.reports, 1, "one report per member");
    alice.report(&second.id).await.unwrap();
    let third = dave.report(&second.id).await.unwrap();
    assert_eq!((third.reports, third.hidden), (3, true));
    assert!(!bob.feed_ids(&community).await.contains(&second.id));
    assert_eq!(code(bob.get(&second.id).await), Code::NotFound);
    assert_eq!(
        alice.queue(&community).await.unwrap(),
        std::slice::from_ref(&second.id)
    );

    // The author removes a post: who and when are kept, the text is not.
    let removed = bd
        .delete_post(bob.r(pb::DeletePostRequest {
            post_id: held.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.status, pb::PostStatus::Removed as i32);
    assert_eq!(removed.removed_by, bob_id);
    assert!(removed.removed_at.is_some() && removed.body.is_empty());
    assert!(!dave.feed_ids(&community).await.contains(&held.id));

    // Bob's own feed across his communities.
    let mine = bd
        .my_feed(bob.r(pb::MyFeedRequest {
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        mine.posts.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&post.id)
    );

    // The same calls over HTTP/JSON (the proto's google.api.http bindings).
    let base = format!("http://{}", ready.address("gateway"));
    let bearer = |token: &str| format!("authorization: Bearer {token}");
    let (status, body) = munity_testkit::curl(&[
        "-X",
        "POST",
        &format!("{base}/v1/communities/{community}/posts"),
        "-H",
        &bearer(&dave_token),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"body": "Via *JSON*"}"#,
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["status"], "POST_STATUS_PUBLISHED");
    assert_eq!(created["bodyHtml"], "Via <em>JSON</em>");
    let url = format!("{base}/v1/posts/{}", created["id"].as_str().unwrap());
    let (status, _) = munity_testkit::curl(&[&url, "-H", &bearer(&bob_token)]).await;
    assert_eq!(status, 200);
    let (status, _) = munity_testkit::curl(&[&url, "-H", &bearer(&carol_token)]).await;
    assert_eq!(status, 404, "an outsider over HTTP too");
}

/// A community made by the first token's user (its owner), joined by the
/// others, once discuss-svc's membership view knows them all.
async fn community_of(channel: &Channel, owner: &As, joining: &[&As]) -> String {
    let mut users_client = UsersClient::new(channel.clone());
    let community = users_client
        .create_community(owner.r(users::CreateCommunityRequest {
            name: "Beekeepers".to_owned(),
            description: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .id;
    for member in joining {
        users_client
            .join_community(member.r(users::JoinCommunityRequest {
                community_id: community.clone(),
            }))
            .await
            .unwrap();
    }
    owner.wait_member(&community).await;
    for member in joining {
        member.wait_member(&community).await;
    }
    community
}

/// The next notification on `stream` (heartbeats passed over).
async fn next_notification(
    stream: &mut tonic::Streaming<notify::SubscribeResponse>,
) -> notify::Notification {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a notification within 10 s")
            .unwrap()
            .expect("the stream goes on");
        match message.message {
            Some(Message::Notification(n)) => return n,
            Some(Message::Heartbeat(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// `who`'s inbox once it holds a notification of `kind` (the relay and
/// notify-svc's consumer take moments).
async fn inbox_with(channel: &Channel, who: &As, kind: &str) -> notify::Notification {
    let started = std::time::Instant::now();
    loop {
        let items = NotifyClient::new(channel.clone())
            .list_inbox(who.r(notify::ListInboxRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .items;
        if let Some(item) = items
            .into_iter()
            .filter_map(|i| i.notification)
            .find(|n| n.kind == kind)
        {
            return item;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no {kind} in the inbox"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posts_topic_is_live_for_members_and_authors_are_told_in_their_inbox() {
    let data = tempfile::tempdir().unwrap();
    let (_ready, channel) = start(data.path()).await;
    let (alice_token, alice_id) = register(&channel, "alice").await;
    let (carol_token, carol_id) = register(&channel, "carol").await;
    let (bob_token, bob_id) = register(&channel, "bob").await;
    let (alice, bob, carol) = (
        As::new(&channel, &alice_token),
        As::new(&channel, &bob_token),
        As::new(&channel, &carol_token),
    );
    let community = community_of(&channel, &alice, &[&bob]).await;
    let post = alice.post(&community, "First *harvest*").await.unwrap();
    let topic = format!("post:{}", post.id);

    // Carol, outside the community, may not follow the post.
    let refused = NotifyClient::new(channel.clone())
        .subscribe(carol.r(notify::SubscribeRequest {
            topics: vec![topic.clone()],
            resume: Vec::new(),
        }))
        .await;
    let refused = match refused {
        Err(status) => status.code(),
        Ok(stream) => match stream.into_inner().message().await {
            Err(status) => status.code(),
            Ok(message) => panic!("carol follows a post: {message:?}"),
        },
    };
    assert_eq!(refused, Code::PermissionDenied);

    // Bob follows it live: his comment and Alice's reaction arrive.
    let mut stream = NotifyClient::new(channel.clone())
        .subscribe(bob.r(notify::SubscribeRequest {
            topics: vec![topic.clone()],
            resume: Vec::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().message;
    assert!(matches!(first, Some(Message::Subscribed(_))), "{first:?}");
    bob.comment(&post.id, "", "Lovely").await.unwrap();
    alice.react(&post.id, pb::ReactionKind::Love).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let n = next_notification(&mut stream).await;
        assert_eq!(n.topic, topic);
        kinds.push(n.kind);
    }
    assert_eq!(
        kinds,
        [
            "munity.discuss.v1.CommentCreated",
            "munity.discuss.v1.ReactionChanged"
        ]
    );

    // The post's author hears of the comment in her inbox.
    inbox_with(&channel, &alice, "munity.discuss.v1.CommentCreated").await;

    // A rejected post's author is told why.
    alice.settings(&community, true).await.unwrap();
    let held = bob.post(&community, "Cheap honey here").await.unwrap();
    alice
        .client
        .clone()
        .reject_post(alice.r(pb::RejectPostRequest {
            post_id: held.id.clone(),
            reason: "no selling".to_owned(),
        }))
        .await
        .unwrap();
    let told = inbox_with(&channel, &bob, "munity.discuss.v1.PostRejected").await;
    let rejected = pb::PostRejected::decode(told.payload.unwrap().value.as_slice()).unwrap();
    assert_eq!(rejected.reason, "no selling");
    assert_eq!(rejected.post_id, held.id);

    // Bob shares Alice's post into his own community, where Carol reads
    // it through the share only; and with Alice herself (her inbox).
    let elsewhere = community_of(&channel, &bob, &[&carol]).await;
    let share = |who: &As, community: &str, user: &str| {
        let request = who.r(pb::SharePostRequest {
            post_id: post.id.clone(),
            community_id: community.to_owned(),
            user_id: user.to_owned(),
            body: "Look at this".to_owned(),
        });
        let mut client = who.client.clone();
        async move { client.share_post(request).await.map(|r| r.into_inner()) }
    };
    let shared = share(&bob, &elsewhere, "").await.unwrap().post.unwrap();
    assert_eq!(shared.shared_post_id, post.id);
    let seen = carol.get(&shared.id).await.unwrap();
    assert_eq!(seen.body, "Look at this");
    assert_eq!(seen.shared.unwrap().body, "First *harvest*");
    assert_eq!(code(carol.get(&post.id).await), Code::NotFound);
    assert_eq!(
        carol.feed_ids(&elsewhere).await,
        std::slice::from_ref(&shared.id)
    );
    // Carol cannot pass it on from the original, nor into Alice's community.
    assert_eq!(code(share(&carol, &elsewhere, "").await), Code::NotFound);
    let both = share(&bob, &elsewhere, &carol_id).await;
    assert_eq!(code(both), Code::InvalidArgument);
    let outside = share(&bob, "", &carol_id).await;
    assert_eq!(code(outside), Code::FailedPrecondition);
    share(&bob, "", &alice_id).await.unwrap();
    let told = inbox_with(&channel, &alice, "munity.discuss.v1.PostShared").await;
    let shared_with = pb::PostShared::decode(told.payload.unwrap().value.as_slice()).unwrap();
    assert_eq!(shared_with.post_id, post.id);

    // Bob mentions Alice (a member: told in her inbox), Carol (not of this
    // community: not told) and himself (not told) in a comment.
    let mention = bob
        .comment(
            &post.id,
            "",
            &format!("@{alice_id} see this, @{carol_id} too, says @{bob_id}"),
        )
        .await
        .unwrap();
    let told = inbox_with(&channel, &alice, "munity.discuss.v1.MembersMentioned").await;
    let mentioned = pb::MembersMentioned::decode(told.payload.unwrap().value.as_slice()).unwrap();
    assert_eq!(mentioned.user_ids, vec![alice_id.clone()]);
    assert_eq!(mentioned.comment_id, mention.id);
    assert_eq!(mentioned.by, bob_id);
    // One event named Alice only: nobody else's inbox has a mention.
    for who in [&bob, &carol] {
        let items = NotifyClient::new(channel.clone())
            .list_inbox(who.r(notify::ListInboxRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .items;
        assert!(
            !items
                .iter()
                .filter_map(|i| i.notification.as_ref())
                .any(|n| n.kind == "munity.discuss.v1.MembersMentioned")
        );
    }
}

/// The mentions in `who`'s inbox: (post, comment) of each, as many as there
/// are notifications.
async fn mentions_of(channel: &Channel, who: &As) -> Vec<(String, String)> {
    let items = NotifyClient::new(channel.clone())
        .list_inbox(who.r(notify::ListInboxRequest {
            page_size: 100,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .items;
    let mut found: Vec<(String, String)> = items
        .into_iter()
        .filter_map(|i| i.notification)
        .filter(|n| n.kind == "munity.discuss.v1.MembersMentioned")
        .map(|n| {
            let m = pb::MembersMentioned::decode(n.payload.unwrap().value.as_slice()).unwrap();
            (m.post_id, m.comment_id)
        })
        .collect();
    found.sort();
    found
}

/// `who`'s own `user:` topic, followed live.
async fn own_topic(
    channel: &Channel,
    who: &As,
    id: &str,
) -> tonic::Streaming<notify::SubscribeResponse> {
    let mut stream = NotifyClient::new(channel.clone())
        .subscribe(who.r(notify::SubscribeRequest {
            topics: vec![format!("user:{id}")],
            resume: Vec::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().message;
    assert!(matches!(first, Some(Message::Subscribed(_))), "{first:?}");
    stream
}

/// The next mention on a `user:` stream (other notifications passed over).
async fn next_mention(
    stream: &mut tonic::Streaming<notify::SubscribeResponse>,
) -> pb::MembersMentioned {
    loop {
        let n = next_notification(stream).await;
        if n.kind == "munity.discuss.v1.MembersMentioned" {
            return pb::MembersMentioned::decode(n.payload.unwrap().value.as_slice()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_by_display_name_tell_exactly_the_members_they_name() {
    let data = tempfile::tempdir().unwrap();
    let (_ready, channel) = start(data.path()).await;
    // Display names as users-svc keeps them: "Ann" is a prefix of "Ann Lee".
    let (mo_token, mo_id) = register(&channel, "Mo").await;
    let (ann_token, ann_id) = register(&channel, "Ann").await;
    let email = format!("ann-lee-{}@example.com", uuid::Uuid::now_v7().simple());
    let (lee_token, lee_id) = munity_testkit::register_as(&channel, "Ann Lee", &email).await;
    let (zed_token, _) = register(&channel, "Zed").await;
    let (mo, ann, lee, zed) = (
        As::new(&channel, &mo_token),
        As::new(&channel, &ann_token),
        As::new(&channel, &lee_token),
        As::new(&channel, &zed_token),
    );
    // Mo owns the community, Ann and Ann Lee join, Zed stays outside.
    let community = community_of(&channel, &mo, &[&ann, &lee]).await;
    let mut ann_live = own_topic(&channel, &ann, &ann_id).await;
    let mut lee_live = own_topic(&channel, &lee, &lee_id).await;

    // The longest name that fits: Ann Lee, not Ann; Zed is no member.
    let welcome = mo
        .post(&community, "Welcome @ann lee! And @Zed, who is not here.")
        .await
        .unwrap();
    let told = next_mention(&mut lee_live).await;
    assert_eq!(told.post_id, welcome.id);
    assert_eq!(told.user_ids, std::slice::from_ref(&lee_id));
    assert_eq!(told.by, mo_id);
    // "@Ann," ends where a word ends before " Lee" could: Ann.
    let thanks = mo
        .comment(&welcome.id, "", "Thanks @Ann, Lee can wait")
        .await
        .unwrap();
    let told = next_mention(&mut ann_live).await;
    assert_eq!(
        (told.post_id, told.comment_id),
        (welcome.id.clone(), thanks.id.clone())
    );
    assert_eq!(told.user_ids, std::slice::from_ref(&ann_id));

    // A held post's mentions: told once it is approved, once.
    mo.settings(&community, true).await.unwrap();
    let held = ann
        .post(&community, "Bees on Sunday, @Ann Lee?")
        .await
        .unwrap();
    assert_eq!(held.status, pb::PostStatus::Pending as i32);
    let approve = |who: &As| {
        let request = who.r(pb::ApprovePostRequest {
            post_id: held.id.clone(),
        });
        let mut client = who.client.clone();
        async move { client.approve_post(request).await }
    };
    approve(&mo).await.unwrap();
    approve(&mo).await.unwrap();
    let told = next_mention(&mut lee_live).await;
    assert_eq!(
        (told.post_id, told.user_ids),
        (held.id.clone(), vec![lee_id.clone()])
    );
    assert_eq!(told.by, ann_id);

    // Once a last mention of Ann's has arrived, everything before it has
    // (one outbox, one log, in order): each inbox holds exactly its own.
    mo.settings(&community, false).await.unwrap();
    let last = mo.post(&community, "@Ann: that is all").await.unwrap();
    assert_eq!(next_mention(&mut ann_live).await.post_id, last.id);
    let mut lee_expected = vec![
        (welcome.id.clone(), String::new()),
        (held.id.clone(), String::new()),
    ];
    lee_expected.sort();
    assert_eq!(mentions_of(&channel, &lee).await, lee_expected);
    let mut ann_expected = vec![
        (welcome.id.clone(), thanks.id.clone()),
        (last.id.clone(), String::new()),
    ];
    ann_expected.sort();
    assert_eq!(mentions_of(&channel, &ann).await, ann_expected);
    assert!(mentions_of(&channel, &mo).await.is_empty());
    assert!(mentions_of(&channel, &zed).await.is_empty());
}
