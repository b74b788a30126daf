//! Publishing on a `user:` topic: the notification goes into the user's
//! inbox before anyone hears it live, so a client that counts its unread
//! items when it hears one (the web app's badge does) finds it counted.

use std::{sync::Arc, time::Duration};

use notify_svc::{
    hub::{Heard, Hub, Retention, embedded::EmbeddedHub},
    inbox::{Inbox, InboxLimits, embedded::EmbeddedInbox},
    publish::Publisher,
};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_notification_heard_live_is_in_the_inbox_already() {
    let dir = tempfile::tempdir().unwrap();
    // As `munity dev` keeps them: the hub and the inbox in one file.
    let file = dir.path().join("munity.redb");
    let retention = Retention {
        size: 100,
        ttl_secs: 3600,
    };
    let hub: Arc<dyn Hub> = Arc::new(EmbeddedHub::open(&file, retention).unwrap());
    let limits = InboxLimits {
        ttl_secs: 3600,
        count_cap: 1000,
    };
    let inbox: Arc<dyn Inbox> = Arc::new(EmbeddedInbox::open(&file, limits).unwrap());
    let publisher = Publisher {
        hub: hub.clone(),
        inbox: inbox.clone(),
    };
    let user = Uuid::now_v7();
    let topic = format!("user:{user}");
    let mut live = hub.follow(vec![topic.clone()]);
    for n in 0..20u64 {
        let publishing = {
            let (publisher, topic) = (publisher.clone(), topic.clone());
            tokio::spawn(async move {
                publisher
                    .publish(
                        &topic,
                        &format!("id-{n}"),
                        "munity.test.Thing",
                        b"hi",
                        munity_store::now_millis(),
                    )
                    .await
                    .unwrap()
            })
        };
        let heard = loop {
            match tokio::time::timeout(Duration::from_secs(5), live.next())
                .await
                .expect("heard within 5 s")
                .unwrap()
            {
                Heard::Notification(heard) => break heard,
                Heard::Behind(_) => continue,
            }
        };
        // At once, as a client asks when it hears one.
        assert_eq!(
            inbox.unread(user).await.unwrap(),
            n + 1,
            "notification {n} was heard live before it was in the inbox"
        );
        assert_eq!(heard.offset, n + 1);
        assert_eq!(*heard, publishing.await.unwrap());
    }
}
