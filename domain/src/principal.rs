//! Who is making a request, and what they may touch.

use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPrincipal {
    pub token_id: Uuid,
    pub user_id: Uuid,
    /// `Some` for a project-scoped token: it may act on that project only.
    pub project_id: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Token(TokenPrincipal),
    /// Development bypass (loopback binds only): an operator without a token.
    DevBypass,
    /// The first-token bootstrap request (no active token exists yet).
    Bootstrap,
    /// The service's own scheduled work (a sync on a timer).
    Scheduler,
}

impl Principal {
    /// The project a scoped token is confined to.
    pub fn scope(&self) -> Option<Uuid> {
        match self {
            Principal::Token(t) => t.project_id,
            _ => None,
        }
    }

    pub fn is_scoped(&self) -> bool {
        self.scope().is_some()
    }

    pub fn may_access(&self, project_id: Uuid) -> bool {
        self.scope().is_none_or(|scope| scope == project_id)
    }

    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Principal::Token(t) => Some(t.user_id),
            _ => None,
        }
    }

    pub fn token_id(&self) -> Option<Uuid> {
        match self {
            Principal::Token(t) => Some(t.token_id),
            _ => None,
        }
    }
}
