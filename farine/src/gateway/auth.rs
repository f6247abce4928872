//! Who may use the gateway: a bearer token from `auth_tokens`, or a JSON Web Token signed
//! with HS256 by `auth_jwt_secret` and not expired. Browsers cannot set headers on a
//! WebSocket or an `EventSource`, so the token may also come as the `access_token` query
//! parameter (as OAuth 2.0's RFC 6750 allows); prefer the header where the client can.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use super::reply::PublicError;
use crate::config::Auth;

/// The longest token looked at: anything longer is refused unread.
const MAX_TOKEN_BYTES: usize = 8192;

pub(crate) struct Authenticator {
    tokens: Vec<Vec<u8>>,
    jwt: Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>,
    required: bool,
}

impl Authenticator {
    pub fn new(auth: &Auth) -> Authenticator {
        match auth {
            Auth::None => Authenticator {
                tokens: Vec::new(),
                jwt: None,
                required: false,
            },
            Auth::Tokens(tokens) => Authenticator {
                tokens: tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
                jwt: None,
                required: true,
            },
            Auth::Jwt(secret) => {
                let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
                validation.leeway = 30;
                Authenticator {
                    tokens: Vec::new(),
                    jwt: Some((
                        jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
                        validation,
                    )),
                    required: true,
                }
            }
        }
    }

    /// Ok when no authentication is configured, or the request carries a valid token in its
    /// `Authorization: Bearer` header or, failing that, in `query_token`.
    pub fn check(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<(), PublicError> {
        if !self.required {
            return Ok(());
        }
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let token = match header {
            Some(value) => value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    PublicError::unauthenticated(
                        "expected an Authorization header of the form: Bearer <token>",
                    )
                })?,
            None => query_token.ok_or_else(|| {
                PublicError::unauthenticated(
                    "a token is required: an Authorization: Bearer header, or the access_token \
                     query parameter",
                )
            })?,
        };
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(PublicError::unauthenticated("invalid token"));
        }
        if let Some((key, validation)) = &self.jwt {
            return jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, key, validation,
            )
            .map(|_| ())
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match err.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::MissingRequiredClaim(_) => "the token has no exp claim",
                    _ => "invalid token",
                };
                PublicError::unauthenticated(why)
            });
        }
        // Constant time, and every token compared: how long the check takes says nothing of
        // how much of a guess was right.
        let matched = self
            .tokens
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.as_slice().ct_eq(token.as_bytes())
            });
        if bool::from(matched) {
            Ok(())
        } else {
            Err(PublicError::unauthenticated("invalid token"))
        }
    }
}
