//! WebSocket close codes: the one place they are named (docs/api.md lists
//! them for clients).

/// Why a node closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1001: the node is shutting down; reconnect (to another node).
    GoingAway,
    /// 1002: a framing or protocol violation.
    ProtocolError,
    /// 1003: a binary message on a chat socket.
    Unsupported,
    /// 1007: a text message that is not UTF-8.
    InvalidPayload,
    /// 1008: pings went unanswered, or the client kept sending far over its rate.
    PolicyViolation,
    /// 1009: a message over the size limit.
    TooBig,
    /// 1011: the node cannot go on serving the connection.
    InternalError,
    /// 1013: the client did not read fast enough (a slow consumer);
    /// reconnect and catch up from history.
    TryAgainLater,
    /// 4001: the connection's login session was revoked (logout, a password
    /// change, a reused refresh token, a ban); log in again.
    SessionRevoked,
    /// 4002: the connection's access token expired without a `refresh`;
    /// get a new token and reconnect.
    TokenExpired,
    /// 4003: an administrator disconnected the user; reconnecting is allowed.
    Disconnected,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::Unsupported => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TryAgainLater => 1013,
            CloseCode::SessionRevoked => 4001,
            CloseCode::TokenExpired => 4002,
            CloseCode::Disconnected => 4003,
        }
    }

    /// The code a number names, among those one node asks another to send
    /// (over the bus).
    pub fn of(code: u16) -> Option<CloseCode> {
        ALL.into_iter().find(|c| c.code() == code)
    }
}

const ALL: [CloseCode; 11] = [
    CloseCode::GoingAway,
    CloseCode::ProtocolError,
    CloseCode::Unsupported,
    CloseCode::InvalidPayload,
    CloseCode::PolicyViolation,
    CloseCode::TooBig,
    CloseCode::InternalError,
    CloseCode::TryAgainLater,
    CloseCode::SessionRevoked,
    CloseCode::TokenExpired,
    CloseCode::Disconnected,
];

/// A close the node decides on: its code and the reason sent with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    pub reason: String,
}

impl Close {
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Close { code, reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_ones_clients_are_told() {
        let all = [
            (CloseCode::GoingAway, 1001),
            (CloseCode::ProtocolError, 1002),
            (CloseCode::Unsupported, 1003),
            (CloseCode::InvalidPayload, 1007),
            (CloseCode::PolicyViolation, 1008),
            (CloseCode::TooBig, 1009),
            (CloseCode::InternalError, 1011),
            (CloseCode::TryAgainLater, 1013),
            (CloseCode::SessionRevoked, 4001),
            (CloseCode::TokenExpired, 4002),
            (CloseCode::Disconnected, 4003),
        ];
        for (close, code) in all {
            assert_eq!(close.code(), code);
            assert_eq!(CloseCode::of(code), Some(close));
        }
        assert_eq!(CloseCode::of(1000), None);
    }
}
