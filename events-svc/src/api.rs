//! The `munity.events.v1.Events` gRPC service.
//!
//! Visibility: an event without a community is visible to every signed-in
//! user; a community's event only to its members (the membership view,
//! `members.rs`) and admins. An event the caller cannot see is NOT_FOUND,
//! like a missing one. Cancelling is for the owner, the community's
//! moderators and owner, and admins; closing voting for the owner and
//! admins. Admin is the token's role (tokens live minutes).

use std::sync::Arc;

use munity_platform::{
    auth::Claims,
    authed,
    error::FieldViolations,
    wire::{millis, one_id, parse_id},
};
use munity_proto::events::v1::{self as pb, events_server::Events};
use munity_store::page_token;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert::{event_to_proto, participant_to_proto, timestamp},
    domain::{
        self, EventRecord, EventUpdate, HOUR_MS, MemberRole, ParticipantRecord,
        Status as EventStatus, TimeOption, limits, now_millis,
    },
    error::EventsError,
    store::{CloseOutcome, EventsRepository, JoinOutcome, Listing, UpdateOutcome, VoteOutcome},
};

/// The longest explicit GetStats range, in hours (31 days).
const STATS_MAX_HOURS: i64 = 31 * 24;

use munity_bus::membership::MembershipView;

type Result<T> = std::result::Result<T, EventsError>;

pub struct EventsApi {
    repo: Arc<dyn EventsRepository>,
    memberships: Arc<dyn MembershipView>,
}

impl EventsApi {
    pub fn new(repo: Arc<dyn EventsRepository>, memberships: Arc<dyn MembershipView>) -> Self {
        EventsApi { repo, memberships }
    }

    fn is_admin(claims: &Claims) -> bool {
        claims.has_role("admin")
    }

    /// The caller's role in `community`, as the membership view knows it.
    async fn role_in(&self, community: Uuid, user: Uuid) -> Result<Option<MemberRole>> {
        Ok(self.memberships.role(community, user).await?)
    }

    /// The event, if the caller may see it; NOT_FOUND otherwise.
    async fn visible(&self, claims: &Claims, raw_id: &str) -> Result<EventRecord> {
        let id = one_id(raw_id, "event_id")?;
        let event = self
            .repo
            .get_event(id)
            .await?
            .ok_or(EventsError::NotFound)?;
        if let Some(community) = event.community_id
            && !Self::is_admin(claims)
            && self.role_in(community, claims.sub).await?.is_none()
        {
            return Err(EventsError::NotFound);
        }
        Ok(event)
    }

    /// The event as the caller sees it: counts and their own votes.
    async fn view(&self, event: &EventRecord, user: Uuid) -> Result<pb::Event> {
        let counts = self.repo.vote_counts(event.id).await?;
        let mine = self.repo.votes_of(event.id, user).await?;
        Ok(event_to_proto(event, &counts, &mine))
    }

    async fn reload(&self, id: Uuid, user: Uuid) -> Result<pb::Event> {
        let view = self
            .repo
            .view(id, user)
            .await?
            .ok_or(EventsError::NotFound)?;
        Ok(event_to_proto(&view.event, &view.counts, &view.mine))
    }

    async fn create(&self, claims: &Claims, request: pb::CreateEventRequest) -> Result<pb::Event> {
        let mut violations = FieldViolations::new();
        let title = domain::check_text(
            &request.title,
            "title",
            limits::TITLE_MAX,
            true,
            &mut violations,
        );
        let description = domain::check_text(
            &request.description,
            "description",
            limits::DESCRIPTION_MAX,
            false,
            &mut violations,
        );
        let location = domain::check_text(
            &request.location,
            "location",
            limits::LOCATION_MAX,
            false,
            &mut violations,
        );
        let community_id = (!request.community_id.trim().is_empty())
            .then(|| parse_id(&request.community_id, "community_id", &mut violations));
        let mut options = Vec::with_capacity(request.options.len());
        for (i, option) in request.options.iter().enumerate() {
            match (&option.start, &option.end) {
                (Some(start), Some(end)) => options.push(TimeOption {
                    start: millis(start),
                    end: millis(end),
                }),
                _ => violations.add(format!("options[{i}]"), "needs a start and an end"),
            }
        }
        let now = now_millis();
        let voting_deadline = match &request.voting_deadline {
            Some(deadline) => millis(deadline),
            None => {
                violations.add("voting_deadline", "is required");
                now
            }
        };
        if request.voting_deadline.is_some() && options.len() == request.options.len() {
            domain::check_schedule(&options, voting_deadline, now, &mut violations);
        }
        violations.into_result()?;
        if let Some(community) = community_id
            && self.role_in(community, claims.sub).await?.is_none()
        {
            return Err(EventsError::PermissionDenied(format!(
                "only members of community {community} create its events"
            )));
        }
        let event = EventRecord {
            id: Uuid::now_v7(),
            owner_id: claims.sub,
            community_id,
            title,
            description,
            location,
            options,
            voting_deadline,
            capacity: (request.capacity > 0).then_some(request.capacity),
            status: EventStatus::Voting,
            participant_count: 0,
            created_at: now,
        };
        // A new meeting in my community: its members are told personally
        // (at most AUDIENCE_MAX; the rest see it on the community's topic).
        let members = match community_id {
            Some(community) => {
                self.memberships
                    .members_of(community, domain::AUDIENCE_MAX + 1)
                    .await?
            }
            None => Vec::new(),
        };
        self.repo.create_event_telling(&event, &members).await?;
        Ok(event_to_proto(&event, &vec![0; event.options.len()], &[]))
    }

    async fn list(
        &self,
        claims: &Claims,
        request: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse> {
        let listing = match pb::EventFilter::try_from(request.filter) {
            Ok(pb::EventFilter::Upcoming) => return self.upcoming(claims, request).await,
            Ok(pb::EventFilter::Mine) => Listing::Owner(claims.sub),
            Ok(pb::EventFilter::Joined) => Listing::Joined(claims.sub),
            Ok(pb::EventFilter::Community) => {
                let community = one_id(&request.community_id, "community_id")?;
                if !Self::is_admin(claims) && self.role_in(community, claims.sub).await?.is_none() {
                    return Err(EventsError::PermissionDenied(format!(
                        "only members of community {community} see its events"
                    )));
                }
                Listing::Community(community)
            }
            _ => {
                return Err(EventsError::invalid(
                    "filter",
                    "must be UPCOMING, MINE, JOINED or COMMUNITY",
                ));
            }
        };
        let after = page_token::decode(&request.page_token)?;
        let size = munity_store::page_size(request.page_size, 20, 100);
        let page = self.repo.list_events(&listing, after, size).await?;
        let mut events = Vec::with_capacity(page.items.len());
        for event in &page.items {
            // A joined event of a community the caller has left since is
            // no longer theirs to see.
            if let Some(community) = event.community_id
                && matches!(listing, Listing::Joined(_))
                && !Self::is_admin(claims)
                && self.role_in(community, claims.sub).await?.is_none()
            {
                continue;
            }
            events.push(self.view(event, claims.sub).await?);
        }
        Ok(pb::ListEventsResponse {
            events,
            next_page_token: page_token::encode(page.next_after),
        })
    }

    /// Upcoming events the caller may see, soonest first: reads a few
    /// bounded stretches of the listing by start, passing over community
    /// events of communities the caller is not in.
    async fn upcoming(
        &self,
        claims: &Claims,
        request: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse> {
        let mut after = page_token::decode_at(&request.page_token)?;
        let size = munity_store::page_size(request.page_size, 20, 100);
        let now = now_millis();
        let admin = Self::is_admin(claims);
        let mut member_of: std::collections::HashMap<Uuid, bool> = Default::default();
        let mut events = Vec::new();
        for _ in 0..4 {
            let page = self
                .repo
                .list_by_start(now, after, size - events.len())
                .await?;
            for event in page.items {
                let visible = match event.community_id {
                    None => true,
                    Some(_) if admin => true,
                    Some(community) => match member_of.get(&community) {
                        Some(&member) => member,
                        None => {
                            let member = self.role_in(community, claims.sub).await?.is_some();
                            member_of.insert(community, member);
                            member
                        }
                    },
                };
                if visible {
                    events.push(self.view(&event, claims.sub).await?);
                }
            }
            after = page.next;
            if after.is_none() || events.len() >= size {
                break;
            }
        }
        Ok(pb::ListEventsResponse {
            events,
            next_page_token: page_token::encode_at(after),
        })
    }

    /// Refuses unless the caller is the event's owner, a moderator (or
    /// the owner) of its community, or an admin.
    async fn may_manage(&self, claims: &Claims, event: &EventRecord, what: &str) -> Result<()> {
        let moderates = match event.community_id {
            Some(community) => matches!(
                self.role_in(community, claims.sub).await?,
                Some(MemberRole::Moderator | MemberRole::Owner)
            ),
            None => false,
        };
        if event.owner_id != claims.sub && !moderates && !Self::is_admin(claims) {
            return Err(EventsError::PermissionDenied(format!(
                "only the event's owner, its community's moderators or an admin {what} it"
            )));
        }
        Ok(())
    }

    async fn cancel(&self, claims: &Claims, request: pb::CancelEventRequest) -> Result<pb::Event> {
        let event = self.visible(claims, &request.event_id).await?;
        self.may_manage(claims, &event, "cancel").await?;
        self.repo.cancel(event.id).await?;
        self.reload(event.id, claims.sub).await
    }

    async fn update(&self, claims: &Claims, request: pb::UpdateEventRequest) -> Result<pb::Event> {
        let event = self.visible(claims, &request.event_id).await?;
        self.may_manage(claims, &event, "update").await?;
        let mut violations = FieldViolations::new();
        let mut text = |raw: &Option<String>, field: &str, max: usize, required: bool| {
            raw.as_deref()
                .map(|raw| domain::check_text(raw, field, max, required, &mut violations))
        };
        let update = EventUpdate {
            title: text(&request.title, "title", limits::TITLE_MAX, true),
            description: text(
                &request.description,
                "description",
                limits::DESCRIPTION_MAX,
                false,
            ),
            location: text(&request.location, "location", limits::LOCATION_MAX, false),
            capacity: request.capacity.map(|c| (c > 0).then_some(c)),
        };
        if update == EventUpdate::default() {
            violations.add(
                "event_id",
                "nothing to change: set title, description, location or capacity",
            );
        }
        violations.into_result()?;
        match self
            .repo
            .update_event(event.id, &update, claims.sub)
            .await?
        {
            UpdateOutcome::Updated(_) => self.reload(event.id, claims.sub).await,
            UpdateOutcome::BelowParticipants(count) => Err(EventsError::FailedPrecondition(
                format!("capacity cannot be below the {count} participants already in"),
            )),
            UpdateOutcome::Cancelled => Err(EventsError::FailedPrecondition(
                "event is cancelled".to_owned(),
            )),
            UpdateOutcome::NoEvent => Err(EventsError::NotFound),
        }
    }

    async fn stats(&self, claims: &Claims, request: pb::GetStatsRequest) -> Result<pb::Stats> {
        if !Self::is_admin(claims) {
            return Err(EventsError::PermissionDenied(
                "only admins see statistics".to_owned(),
            ));
        }
        let (from_hour, to_hour) = stats_window(&request, now_millis())?;
        let top = munity_store::page_size(request.top, 10, 50);
        let record = self.repo.stats(from_hour, to_hour, top).await?;
        let mut top_events = Vec::with_capacity(record.top_events.len());
        for (id, joins) in record.top_events {
            if let Some(event) = self.repo.get_event(id).await? {
                top_events.push(pb::TopEvent {
                    event_id: id.to_string(),
                    title: event.title,
                    joins,
                    participant_count: event.participant_count,
                });
            }
        }
        Ok(pb::Stats {
            from: Some(timestamp(from_hour * HOUR_MS)),
            to: Some(timestamp(to_hour * HOUR_MS)),
            events_created: record.events_created,
            votes_cast: record.votes_cast,
            joins: record.joins,
            active_users: record.active_users,
            top_events,
        })
    }

    async fn vote(
        &self,
        claims: &Claims,
        request: pb::VoteRequest,
        cast: bool,
    ) -> Result<pb::Event> {
        let event = self.visible(claims, &request.event_id).await?;
        let (outcome, view) = self
            .repo
            .vote_and_view(&event, request.option_id, claims.sub, cast)
            .await?;
        match outcome {
            VoteOutcome::Changed | VoteOutcome::Unchanged => {
                let view = view.ok_or(EventsError::NotFound)?;
                Ok(event_to_proto(&view.event, &view.counts, &view.mine))
            }
            VoteOutcome::NotVoting => Err(EventsError::FailedPrecondition(
                "voting on this event is closed".to_owned(),
            )),
            VoteOutcome::NoOption => Err(EventsError::invalid(
                "option_id",
                &format!(
                    "must be one of the event's {} options (0 to {})",
                    event.options.len(),
                    event.options.len().saturating_sub(1)
                ),
            )),
            VoteOutcome::NoEvent => Err(EventsError::NotFound),
        }
    }

    async fn close(&self, claims: &Claims, request: pb::CloseVotingRequest) -> Result<pb::Event> {
        let event = self.visible(claims, &request.event_id).await?;
        if event.owner_id != claims.sub && !Self::is_admin(claims) {
            return Err(EventsError::PermissionDenied(
                "only the event's owner closes its voting".to_owned(),
            ));
        }
        match self.repo.close_voting(event.id).await? {
            CloseOutcome::Closed(_) => self.reload(event.id, claims.sub).await,
            CloseOutcome::NotVoting => Err(EventsError::FailedPrecondition(
                "voting on this event is already closed".to_owned(),
            )),
            CloseOutcome::NoEvent => Err(EventsError::NotFound),
        }
    }

    async fn join(&self, claims: &Claims, request: pb::JoinRequest) -> Result<pb::Participant> {
        let event = self.visible(claims, &request.event_id).await?;
        let joined_at = now_millis();
        match self.repo.join(event.id, claims.sub, joined_at).await? {
            JoinOutcome::Joined | JoinOutcome::AlreadyJoined => {
                Ok(participant_to_proto(&ParticipantRecord {
                    event_id: event.id,
                    user_id: claims.sub,
                    joined_at,
                }))
            }
            JoinOutcome::Full(capacity) => Err(EventsError::FailedPrecondition(format!(
                "event is full (capacity {capacity})"
            ))),
            JoinOutcome::Cancelled => Err(EventsError::FailedPrecondition(
                "event is cancelled".to_owned(),
            )),
            JoinOutcome::NoEvent => Err(EventsError::NotFound),
        }
    }

    async fn participants(
        &self,
        claims: &Claims,
        request: pb::ListParticipantsRequest,
    ) -> Result<pb::ListParticipantsResponse> {
        let event = self.visible(claims, &request.event_id).await?;
        let after = page_token::decode(&request.page_token)?;
        let size = munity_store::page_size(request.page_size, 50, 500);
        let page = self.repo.list_participants(event.id, after, size).await?;
        Ok(pb::ListParticipantsResponse {
            participants: page.items.iter().map(participant_to_proto).collect(),
            next_page_token: page_token::encode(page.next_after),
        })
    }
}

/// The hours `[from, to)` GetStats counts: a named window ending with the
/// current hour, or an explicit range rounded out to whole hours.
fn stats_window(request: &pb::GetStatsRequest, now: domain::Millis) -> Result<(i64, i64)> {
    let now_hour = now.div_euclid(HOUR_MS);
    let explicit = request.from.is_some() || request.to.is_some();
    let back = match pb::StatsWindow::try_from(request.window) {
        Ok(pb::StatsWindow::LastHour) => Some(1),
        Ok(pb::StatsWindow::LastDay) => Some(24),
        Ok(pb::StatsWindow::LastWeek) => Some(168),
        Ok(pb::StatsWindow::Unspecified) => None,
        Err(_) => {
            return Err(EventsError::invalid(
                "window",
                "must be LAST_HOUR, LAST_DAY or LAST_WEEK",
            ));
        }
    };
    match (back, explicit) {
        (Some(_), true) => Err(EventsError::invalid(
            "window",
            "set a window, or from and to, not both",
        )),
        (Some(back), false) => Ok((now_hour - back, now_hour + 1)),
        (None, false) => Err(EventsError::invalid(
            "window",
            "set a window, or from and to",
        )),
        (None, true) => {
            let mut violations = FieldViolations::new();
            let from = request.from.as_ref().map(millis);
            let to = request.to.as_ref().map(millis);
            if from.is_none() {
                violations.add("from", "is required with to");
            }
            if to.is_none() {
                violations.add("to", "is required with from");
            }
            violations.into_result()?;
            let (from, to) = (from.unwrap_or(0), to.unwrap_or(0));
            let (from_hour, to_hour) = (
                from.div_euclid(HOUR_MS),
                (to + HOUR_MS - 1).div_euclid(HOUR_MS),
            );
            if to <= from {
                return Err(EventsError::invalid("to", "must be after from"));
            }
            if to_hour - from_hour > STATS_MAX_HOURS {
                return Err(EventsError::invalid(
                    "to",
                    "must be at most 31 days after from",
                ));
            }
            Ok((from_hour, to_hour))
        }
    }
}

#[tonic::async_trait]
impl Events for EventsApi {
    async fn create_event(
        &self,
        request: Request<pb::CreateEventRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, EventsError, |claims, message| self
            .create(&claims, message))
    }

    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, EventsError, |claims, message| async {
            let event = self.visible(&claims, &message.event_id).await?;
            self.reload(event.id, claims.sub).await
        })
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> std::result::Result<Response<pb::ListEventsResponse>, Status> {
        authed!(request, EventsError, |claims, message| self
            .list(&claims, message))
    }

    async fn update_event(
        &self,
        request: Request<pb::UpdateEventRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, EventsError, |claims, message| self
            .update(&claims, message))
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> std::result::Result<Response<pb::Stats>, Status> {
        authed!(request, EventsError, |claims, message| self
            .stats(&claims, message))
    }

    async fn cancel_event(
        &self,
        request: Request<pb::CancelEventRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, EventsError, |claims, message| self
            .cancel(&claims, message))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, EventsError, |claims, message| self
            .vote(&claims, message, true))
    }

    async fn unvote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, EventsError, |claims, message| self
            .vote(&claims, message, false))
    }

    async fn close_voting(
        &self,
        request: Request<pb::CloseVotingRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, EventsError, |claims, message| self
            .close(&claims, message))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> std::result::Result<Response<pb::Participant>, Status> {
        authed!(request, EventsError, |claims, message| self
            .join(&claims, message))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> std::result::Result<Response<pb::LeaveResponse>, Status> {
        authed!(request, EventsError, |claims, message| async {
            let event = self.visible(&claims, &message.event_id).await?;
            self.repo.leave(event.id, claims.sub).await?;
            Ok(pb::LeaveResponse {})
        })
    }

    async fn list_participants(
        &self,
        request: Request<pb::ListParticipantsRequest>,
    ) -> std::result::Result<Response<pb::ListParticipantsResponse>, Status> {
        authed!(request, EventsError, |claims, message| self
            .participants(&claims, message))
    }
}
