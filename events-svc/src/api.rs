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
    auth::{Claims, caller},
    error::FieldViolations,
    wire::{millis, parse_id},
};
use munity_proto::events::v1::{self as pb, events_server::Events};
use munity_store::page_token;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert::{event_to_proto, participant_to_proto},
    domain::{
        self, EventRecord, MemberRole, ParticipantRecord, Status as EventStatus, TimeOption,
        limits, now_millis,
    },
    error::EventsError,
    store::{CloseOutcome, EventsRepository, JoinOutcome, Listing, VoteOutcome},
};

type Result<T> = std::result::Result<T, EventsError>;

pub struct EventsApi {
    repo: Arc<dyn EventsRepository>,
}

impl EventsApi {
    pub fn new(repo: Arc<dyn EventsRepository>) -> Self {
        EventsApi { repo }
    }

    fn is_admin(claims: &Claims) -> bool {
        claims.has_role("admin")
    }

    /// The caller's role in `community`, as the membership view knows it.
    async fn role_in(&self, community: Uuid, user: Uuid) -> Result<Option<MemberRole>> {
        Ok(self.repo.member_role(community, user).await?)
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
        let event = self
            .repo
            .get_event(id)
            .await?
            .ok_or(EventsError::NotFound)?;
        self.view(&event, user).await
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
        self.repo.create_event(&event).await?;
        Ok(event_to_proto(&event, &vec![0; event.options.len()], &[]))
    }

    async fn list(
        &self,
        claims: &Claims,
        request: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse> {
        let listing = match pb::EventFilter::try_from(request.filter) {
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
                    "must be MINE, JOINED or COMMUNITY",
                ));
            }
        };
        let after = page_token::decode(&request.page_token)
            .map_err(|e| EventsError::invalid("page_token", &e.to_string()))?;
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

    async fn cancel(&self, claims: &Claims, request: pb::CancelEventRequest) -> Result<pb::Event> {
        let event = self.visible(claims, &request.event_id).await?;
        let moderates = match event.community_id {
            Some(community) => matches!(
                self.role_in(community, claims.sub).await?,
                Some(MemberRole::Moderator | MemberRole::Owner)
            ),
            None => false,
        };
        if event.owner_id != claims.sub && !moderates && !Self::is_admin(claims) {
            return Err(EventsError::PermissionDenied(
                "only the event's owner, its community's moderators or an admin cancel it"
                    .to_owned(),
            ));
        }
        self.repo.cancel(event.id).await?;
        self.reload(event.id, claims.sub).await
    }

    async fn vote(
        &self,
        claims: &Claims,
        request: pb::VoteRequest,
        cast: bool,
    ) -> Result<pb::Event> {
        let event = self.visible(claims, &request.event_id).await?;
        let outcome = if cast {
            self.repo
                .cast_vote(event.id, request.option_id, claims.sub)
                .await?
        } else {
            self.repo
                .withdraw_vote(event.id, request.option_id, claims.sub)
                .await?
        };
        match outcome {
            VoteOutcome::Changed | VoteOutcome::Unchanged => {
                self.reload(event.id, claims.sub).await
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
        let after = page_token::decode(&request.page_token)
            .map_err(|e| EventsError::invalid("page_token", &e.to_string()))?;
        let size = munity_store::page_size(request.page_size, 50, 500);
        let page = self.repo.list_participants(event.id, after, size).await?;
        Ok(pb::ListParticipantsResponse {
            participants: page.items.iter().map(participant_to_proto).collect(),
            next_page_token: page_token::encode(page.next_after),
        })
    }
}

fn one_id(raw: &str, field: &str) -> Result<Uuid> {
    let mut violations = FieldViolations::new();
    let id = parse_id(raw, field, &mut violations);
    violations.into_result()?;
    Ok(id)
}

/// Runs a handler with the verified caller.
macro_rules! authed {
    ($request:ident, |$claims:ident, $message:ident| $body:expr) => {{
        let $claims = caller(&$request)?.clone();
        let $message = $request.into_inner();
        let result: Result<_> = $body.await;
        result.map(Response::new).map_err(Status::from)
    }};
}

#[tonic::async_trait]
impl Events for EventsApi {
    async fn create_event(
        &self,
        request: Request<pb::CreateEventRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, |claims, message| self.create(&claims, message))
    }

    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, |claims, message| async {
            let event = self.visible(&claims, &message.event_id).await?;
            self.view(&event, claims.sub).await
        })
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> std::result::Result<Response<pb::ListEventsResponse>, Status> {
        authed!(request, |claims, message| self.list(&claims, message))
    }

    async fn cancel_event(
        &self,
        request: Request<pb::CancelEventRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, |claims, message| self.cancel(&claims, message))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, |claims, message| self.vote(&claims, message, true))
    }

    async fn unvote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, |claims, message| self
            .vote(&claims, message, false))
    }

    async fn close_voting(
        &self,
        request: Request<pb::CloseVotingRequest>,
    ) -> std::result::Result<Response<pb::Event>, Status> {
        authed!(request, |claims, message| self.close(&claims, message))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> std::result::Result<Response<pb::Participant>, Status> {
        authed!(request, |claims, message| self.join(&claims, message))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> std::result::Result<Response<pb::LeaveResponse>, Status> {
        authed!(request, |claims, message| async {
            let event = self.visible(&claims, &message.event_id).await?;
            self.repo.leave(event.id, claims.sub).await?;
            Ok(pb::LeaveResponse {})
        })
    }

    async fn list_participants(
        &self,
        request: Request<pb::ListParticipantsRequest>,
    ) -> std::result::Result<Response<pb::ListParticipantsResponse>, Status> {
        authed!(request, |claims, message| self
            .participants(&claims, message))
    }
}
