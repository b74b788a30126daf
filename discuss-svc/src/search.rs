//! Full-text search over published posts (tantivy), one index per
//! replica, in RAM, kept from the domain-event log.
//!
//! Why from the log and not the store: every replica must find every post,
//! whichever replica wrote it, so each one reads the whole log itself
//! (`EventLog::read_from`, outside consumer groups, as the revocation
//! follower does) and applies discuss-svc's post events: published and
//! edited posts are (re)indexed, removed, hidden and rejected ones taken
//! out. Nothing is persisted: a starting replica reads the log again from
//! the oldest event retained, so the index is rebuilt, never backed up,
//! and holds at most what the log retains (`bus.max_len` events bounds
//! its size). A post older than the log's retention is not found; the
//! store stays the truth for everything else (each hit is read back from
//! it, so a post removed since it was indexed is never shown).
//!
//! Bounds on the work one request does: the query is at most
//! [`QUERY_MAX`] characters of which the first [`TERMS_MAX`] words count
//! (each must occur: no query syntax, no wildcards, no fuzzy matching, so
//! a query is a handful of term look-ups), results go [`DEPTH_MAX`] deep,
//! and the caller's communities are a term set of at most the feed's
//! community limit. The writer has one thread and tantivy's smallest
//! memory budget.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use munity_bus::{DomainEvent, EventLog, LogReader};
use munity_platform::shutdown::ShutdownToken;
use munity_proto::discuss::v1 as pb;
use munity_store::{StoreError, StoreResult, page_token};
use prost::Message;
use tantivy::{
    Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term,
    collector::TopDocs,
    query::{BooleanQuery, Occur, Query, TermQuery, TermSetQuery},
    schema::{
        Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
    },
    tokenizer::{AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer},
};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::DiscussError;

/// Longest query, in characters (the proto says the same).
pub const QUERY_MAX: usize = 200;
/// Words of a query that count.
pub const TERMS_MAX: usize = 8;
/// Results per page.
pub const PAGE_MAX: usize = 50;
/// How deep results go, over all pages.
pub const DEPTH_MAX: usize = 200;
/// Events per read of the log.
const BATCH: usize = 500;
/// tantivy's smallest writer budget (one thread).
const WRITER_BYTES: usize = 15_000_000;
/// Changes become searchable at most this long after they are read (one
/// commit carries everything read meanwhile).
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// The analyzer of post text and queries: words, case and accents aside.
const ANALYZER: &str = "words";

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    community: Field,
    body: Field,
}

/// The index a replica searches; [`follow`] keeps it.
#[derive(Clone)]
pub struct PostIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    /// Whether the log has been read to its end once (for tests and logs).
    caught_up: watch::Receiver<bool>,
}

/// What [`follow`] writes with.
pub struct IndexFeed {
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
    caught_up: watch::Sender<bool>,
    /// The posts in the index. The index is this process's own, built by
    /// this feed alone, so this says exactly whether a change must delete
    /// an older document first: a delete is applied at the next commit by
    /// looking its term up in every segment, which most changes (a post
    /// published for the first time) do not need.
    indexed: HashSet<Uuid>,
}

/// One page of hits: post ids, best first, and where the next page starts.
pub struct Hits {
    pub ids: Vec<Uuid>,
    pub next_offset: Option<usize>,
}

fn internal(error: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("search index: {error}"))
}

/// A new, empty index and what keeps it.
pub fn open() -> anyhow::Result<(PostIndex, IndexFeed)> {
    let mut schema = Schema::builder();
    let body_options = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        id: schema.add_text_field("id", STRING | STORED),
        community: schema.add_text_field("community", STRING),
        body: schema.add_text_field("body", body_options),
    };
    let index = Index::create_in_ram(schema.build());
    index.tokenizers().register(ANALYZER, analyzer());
    let writer = index.writer_with_num_threads(1, WRITER_BYTES)?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    let (caught_up_tx, caught_up) = watch::channel(false);
    Ok((
        PostIndex {
            index,
            reader: reader.clone(),
            fields,
            caught_up,
        },
        IndexFeed {
            writer,
            reader,
            fields,
            caught_up: caught_up_tx,
            indexed: HashSet::new(),
        },
    ))
}

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

impl PostIndex {
    /// Whether the log was read to its end once since start.
    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Posts in the index (as of its last commit).
    pub fn documents(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Published posts of `communities` containing every word of `query`
    /// (its first [`TERMS_MAX`]), best first, `size` from `offset`.
    pub async fn search(
        &self,
        query: &str,
        communities: &[Uuid],
        offset: usize,
        size: usize,
    ) -> StoreResult<Hits> {
        let words = self.words(query)?;
        let size = size.min(PAGE_MAX);
        if words.is_empty() || communities.is_empty() || offset >= DEPTH_MAX {
            return Ok(Hits {
                ids: Vec::new(),
                next_offset: None,
            });
        }
        let fields = self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|word| {
                let term = Term::from_field_text(fields.body, word);
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                (Occur::Must, query)
            })
            .collect();
        let in_communities = TermSetQuery::new(
            communities
                .iter()
                .map(|c| Term::from_field_text(fields.community, &c.to_string())),
        );
        clauses.push((Occur::Must, Box::new(in_communities)));
        let query = BooleanQuery::new(clauses);
        // One more than asked tells whether there is a next page.
        let limit = size.min(DEPTH_MAX - offset);
        let reader = self.reader.clone();
        let (ids, more) = tokio::task::spawn_blocking(move || -> StoreResult<(Vec<Uuid>, bool)> {
            let searcher = reader.searcher();
            let top = searcher
                .search(&query, &TopDocs::with_limit(limit + 1).and_offset(offset))
                .map_err(internal)?;
            let more = top.len() > limit;
            let mut ids = Vec::with_capacity(limit);
            for (_, address) in top.into_iter().take(limit) {
                let doc: TantivyDocument = searcher.doc(address).map_err(internal)?;
                if let Some(id) = doc
                    .get_first(fields.id)
                    .and_then(|v| v.as_str())
                    .and_then(|s| Uuid::parse_str(s).ok())
                {
                    ids.push(id);
                }
            }
            Ok((ids, more))
        })
        .await
        .map_err(internal)??;
        let next = offset + limit;
        Ok(Hits {
            ids,
            next_offset: (more && next < DEPTH_MAX).then_some(next),
        })
    }

    /// The query's words as the index holds them, distinct, at most
    /// [`TERMS_MAX`].
    fn words(&self, query: &str) -> StoreResult<Vec<String>> {
        let mut analyzer = self
            .index
            .tokenizers()
            .get(ANALYZER)
            .ok_or_else(|| internal("no analyzer"))?;
        let mut stream = analyzer.token_stream(query);
        let mut words: Vec<String> = Vec::new();
        while stream.advance() && words.len() < TERMS_MAX {
            let word = &stream.token().text;
            if !words.contains(word) {
                words.push(word.clone());
            }
        }
        Ok(words)
    }
}

/// Whether `event` may change the index: discuss-svc's events about a
/// post's text or visibility. Every other event (a vote, a reaction) is
/// passed over without waking the writer.
fn indexes(event: &DomainEvent) -> bool {
    event.source == "discuss-svc"
        && matches!(
            event.r#type.as_str(),
            "munity.discuss.v1.PostPublished"
                | "munity.discuss.v1.PostEdited"
                | "munity.discuss.v1.PostRemoved"
                | "munity.discuss.v1.PostHidden"
                | "munity.discuss.v1.PostRejected"
        )
}

impl IndexFeed {
    /// Applies one event (one that [`indexes`]).
    fn apply(&mut self, event: &DomainEvent) {
        if !indexes(event) {
            return;
        }
        let payload = event.payload.as_slice();
        let post = match event.r#type.as_str() {
            "munity.discuss.v1.PostPublished" => {
                pb::PostPublished::decode(payload).ok().and_then(|e| e.post)
            }
            "munity.discuss.v1.PostEdited" => {
                pb::PostEdited::decode(payload).ok().and_then(|e| e.post)
            }
            "munity.discuss.v1.PostRemoved"
            | "munity.discuss.v1.PostHidden"
            | "munity.discuss.v1.PostRejected" => {
                self.remove(&event.aggregate_id);
                return;
            }
            _ => return,
        };
        let Some(post) = post else { return };
        self.remove(&post.id);
        if post.status == pb::PostStatus::Published as i32 && !post.body.trim().is_empty() {
            let mut doc = TantivyDocument::default();
            doc.add_text(self.fields.id, &post.id);
            doc.add_text(self.fields.community, &post.community_id);
            doc.add_text(self.fields.body, &post.body);
            match self.writer.add_document(doc) {
                Ok(_) => {
                    if let Ok(id) = Uuid::parse_str(&post.id) {
                        self.indexed.insert(id);
                    }
                }
                Err(error) => tracing::warn!(post = %post.id, %error, "post not indexed"),
            }
        }
    }

    /// Deletes `id`'s document, if the index has one (an id that is not a
    /// UUID, which discuss-svc never makes, is deleted regardless).
    fn remove(&mut self, id: &str) {
        let held = Uuid::parse_str(id).map_or(true, |id| self.indexed.remove(&id));
        if held {
            self.writer
                .delete_term(Term::from_field_text(self.fields.id, id));
        }
    }

    /// Makes what was applied searchable.
    fn commit(&mut self) -> tantivy::Result<()> {
        self.writer.commit()?;
        self.reader.reload()
    }
}

/// Keeps the index from `log` until `shutdown`: reads it whole from the
/// oldest event retained, then follows it.
pub async fn follow(log: Arc<dyn EventLog>, feed: IndexFeed, shutdown: ShutdownToken) {
    let mut feed = Some(feed);
    let mut reader: Option<Box<dyn LogReader>> = None;
    let mut failures = 0u32;
    let mut dirty = false;
    let mut last_commit = Instant::now();
    let mut indexed = 0u64;
    loop {
        let current = match reader.as_mut() {
            Some(reader) => reader,
            None => {
                let opened = tokio::select! {
                    () = shutdown.cancelled() => return,
                    opened = log.read_from(0) => opened,
                };
                match opened {
                    Ok(opened) => reader.insert(opened),
                    Err(error) => {
                        failures = backoff(failures, &error, &shutdown).await;
                        continue;
                    }
                }
            }
        };
        let caught_up = feed.as_ref().is_some_and(|f| *f.caught_up.borrow());
        // Until caught up, read without waiting: an empty read is the end.
        // Then changes wait for the next commit at most until it is due.
        let wait = if !caught_up {
            Duration::ZERO
        } else if dirty {
            COMMIT_EVERY.saturating_sub(last_commit.elapsed())
        } else {
            Duration::from_secs(1)
        };
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            read = current.next(BATCH, wait) => read,
        };
        let deliveries = match read {
            Ok(deliveries) => {
                failures = 0;
                deliveries
            }
            Err(error) => {
                failures = backoff(failures, &error, &shutdown).await;
                continue;
            }
        };
        let idle = deliveries.is_empty();
        let full = deliveries.len() >= BATCH;
        indexed += deliveries.len() as u64;
        // Only what changes the index goes to the writer: a commit (and
        // tantivy starts new indexing threads after each) for a batch of
        // votes would change nothing.
        let deliveries: Vec<_> = deliveries
            .into_iter()
            .filter(|d| indexes(&d.event))
            .collect();
        dirty |= !deliveries.is_empty();
        if !dirty && (caught_up || full) {
            continue;
        }
        // A commit writes a new segment (its term dictionary built, its
        // memory zeroed) and reloads the readers: at a commit per read,
        // a thousand posts a second spent most of the process's CPU in
        // tantivy. So at most one per COMMIT_EVERY, and at once when the
        // log's end is first reached (the index is then caught up).
        let commit = dirty && (last_commit.elapsed() >= COMMIT_EVERY || (idle && !caught_up));
        // tantivy's writer blocks (a commit waits for its indexing thread).
        let mut owned = feed.take().expect("the feed is put back after each batch");
        let (owned, result) = match tokio::task::spawn_blocking(move || {
            for delivery in &deliveries {
                owned.apply(&delivery.event);
            }
            let result = if commit { owned.commit() } else { Ok(()) };
            (owned, result)
        })
        .await
        {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "search index writer failed; search stops following the log");
                return;
            }
        };
        match result {
            Ok(()) if commit => {
                dirty = false;
                last_commit = Instant::now();
            }
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(%error, "search index commit failed; retrying with the next batch");
                dirty = true;
                last_commit = Instant::now();
            }
        }
        if idle && !dirty && !*owned.caught_up.borrow() {
            tracing::info!(events = indexed, "search index built from the event log");
            owned.caught_up.send_replace(true);
        }
        feed = Some(owned);
    }
}

async fn backoff(failures: u32, error: &munity_bus::BusError, shutdown: &ShutdownToken) -> u32 {
    if failures == 0 {
        tracing::warn!(%error, "cannot read the event log for the search index; retrying");
    }
    let failures = failures.saturating_add(1);
    let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5));
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(pause) => {}
    }
    failures
}

/// The page token of a search: how many results the next page skips.
pub fn encode_offset(offset: Option<usize>) -> String {
    // The kit's positional token; only its sub-position is used.
    page_token::encode_at(offset.map(|o| (0, Uuid::nil(), o as u32)))
}

/// The offset a search page token continues at (0 for the first page).
pub fn decode_offset(token: &str) -> Result<usize, DiscussError> {
    match page_token::decode_at(token)? {
        None => Ok(0),
        Some((0, id, offset)) if id.is_nil() && (offset as usize) < DEPTH_MAX => {
            Ok(offset as usize)
        }
        Some(_) => Err(DiscussError::invalid(
            "page_token",
            "is not a page token returned by this method",
        )),
    }
}
