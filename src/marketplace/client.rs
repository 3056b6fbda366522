//! The HTTP side: [`MarketplaceClient::push`], [`MarketplaceClient::batch_status`] and
//! [`MarketplaceClient::read_listings`].

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use reqwest::Method;

use super::batch::parse_batch_status;
use super::classify::{classify, clip};
use super::read::{self, ListingPage, ReadFailure, ReadQuery};
use super::{BatchStatus, PreparedRequest, Provider, PushOutcome, StoreCredentials};

/// Longest response body kept in an [`Exchange`] (bytes).
const EXCHANGE_BODY_LIMIT: usize = 4096;
/// Longest response body read at all (a 1000-item batch result is far below this).
const READ_LIMIT: usize = 16 * 1024 * 1024;

/// Where the marketplaces are and how long a call may take.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// e.g. `https://apigw.trendyol.com` (a trailing `/` is ignored; a path prefix is
    /// kept).
    pub trendyol_url: String,
    /// e.g. `https://listing-external.hepsiburada.com`.
    pub hepsiburada_url: String,
    /// Whole-request timeout (connect, send, and reading the answer).
    pub timeout: Duration,
}

/// What went over the wire, for the api_log.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// `None` when no answer arrived.
    pub status: Option<u16>,
    pub duration: Duration,
    /// Masked of the credentials, then cut to at most 4 KiB (on a character boundary); a
    /// 401/403 body is replaced by a description of it.
    pub response_body: String,
}

/// One client for both marketplaces (cheap to clone; connections are pooled).
#[derive(Clone)]
pub struct MarketplaceClient {
    http: reqwest::Client,
    settings: ClientSettings,
}

impl std::fmt::Debug for MarketplaceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketplaceClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A request ready to send, or why it cannot be built from these credentials.
struct Call {
    method: Method,
    url: String,
    headers: HeaderMap,
}

impl MarketplaceClient {
    /// Builds the HTTP client (redirects are not followed: a redirect is a
    /// misconfigured URL, and following it would resend credentials).
    ///
    /// # Panics
    /// If the TLS backend cannot be initialised (as `reqwest::Client::new`).
    pub fn new(settings: ClientSettings) -> MarketplaceClient {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client (TLS backend) initialises");
        MarketplaceClient { http, settings }
    }

    /// The settings in use.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Sends a prepared push with `creds` and classifies the answer.
    ///
    /// Unusable credentials (empty seller id, `.`/`..`, control characters, a Trendyol
    /// store without api key, a `:` in the Basic user) give
    /// `AuthRejected { status: 0 }` without sending anything.
    pub async fn push(
        &self,
        creds: &StoreCredentials,
        request: &PreparedRequest,
    ) -> (PushOutcome, Exchange) {
        if request.provider != creds.provider {
            return (
                PushOutcome::BadRequest {
                    status: 0,
                    message: format!(
                        "request prepared for {} sent with {} credentials",
                        request.provider, creds.provider
                    ),
                },
                not_sent(),
            );
        }
        let call = match self.build(creds, Target::Push) {
            Ok(c) => c,
            Err(why) => {
                return (
                    PushOutcome::AuthRejected {
                        status: 0,
                        message: why,
                    },
                    not_sent(),
                )
            }
        };
        tracing::debug!(
            provider = %creds.provider,
            method = %call.method,
            url = %call.url,
            user_agent = call.headers.get(USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or(""),
            items = request.item_count,
            body_sha256 = %request.body_sha256,
            body = %clip(&String::from_utf8_lossy(&request.body), EXCHANGE_BODY_LIMIT),
            "marketplace push"
        );
        let answer = self.send(call, Some(request.body.clone())).await;
        let mask = |text: &str| creds.redact(text);
        let outcome = match &answer.result {
            Ok((status, headers, body)) => classify(creds.provider, *status, headers, body, &mask),
            Err(message) if !answer.left => PushOutcome::NotDelivered {
                message: message.clone(),
            },
            Err(message) => PushOutcome::Transport {
                message: message.clone(),
            },
        }
        .redacted(creds);
        let exchange = answer.exchange(creds);
        tracing::debug!(
            provider = %creds.provider,
            status = ?exchange.status,
            duration_ms = exchange.duration.as_millis() as u64,
            outcome = ?outcome,
            body = %exchange.response_body,
            "marketplace push answer"
        );
        (outcome, exchange)
    }

    /// Reads a batch result (Trendyol) / upload status (Hepsiburada).
    ///
    /// 2xx bodies go through [`parse_batch_status`] (an unreadable one is
    /// `Failed(Transport)`), `404` is `NotFound`, any other answer is `Failed` with the
    /// push classification of it (`AuthRejected`, `RateLimited`, `ServerError`,
    /// `BadRequest`), and no answer is `Failed(Transport)`.
    pub async fn batch_status(
        &self,
        creds: &StoreCredentials,
        batch_ref: &str,
        request_keys: &[String],
    ) -> (BatchStatus, Exchange) {
        let call = match self.build(creds, Target::Status(batch_ref)) {
            Ok(c) => c,
            Err(why) => {
                return (
                    BatchStatus::Failed(PushOutcome::AuthRejected {
                        status: 0,
                        message: why,
                    }),
                    not_sent(),
                )
            }
        };
        tracing::debug!(
            provider = %creds.provider,
            method = %call.method,
            url = %call.url,
            "marketplace batch status"
        );
        let answer = self.send(call, None).await;
        let mask = |text: &str| creds.redact(text);
        let status = match &answer.result {
            Err(message) => BatchStatus::Failed(PushOutcome::Transport {
                message: message.clone(),
            }),
            Ok((status, _, body)) if (200..300).contains(status) => {
                match parse_batch_status(creds.provider, body, request_keys, &mask) {
                    Ok(s) => s,
                    Err(message) => BatchStatus::Failed(PushOutcome::Transport { message }),
                }
            }
            Ok((404, _, _)) => BatchStatus::NotFound,
            Ok((status, headers, body)) => {
                BatchStatus::Failed(classify(creds.provider, *status, headers, body, &mask))
            }
        }
        .redacted(creds);
        let exchange = answer.exchange(creds);
        tracing::debug!(
            provider = %creds.provider,
            status = ?exchange.status,
            duration_ms = exchange.duration.as_millis() as u64,
            result = %match &status {
                BatchStatus::Pending => "pending".to_string(),
                BatchStatus::UnknownStatus(word) => format!("unknown status word {word:?}"),
                BatchStatus::OutcomeUnknown(why) => format!("outcome unknown: {why}"),
                BatchStatus::Done(items) => format!(
                    "done: {} items, {} failed",
                    items.len(),
                    items.iter().filter(|i| !i.success).count()
                ),
                BatchStatus::NotFound => "not found".to_string(),
                BatchStatus::Failed(o) => format!("failed: {o:?}"),
            },
            body = %exchange.response_body,
            "marketplace batch status answer"
        );
        (status, exchange)
    }

    /// Reads one page of listings, or listings by key (reconciliation). A 2xx body goes
    /// through [`read::parse_listings`]; any other answer is [`ReadFailure::Refused`] with
    /// the push classification of it; no answer is [`ReadFailure::Transport`]. Lock and
    /// freeze reasons are masked of the credentials, as response bodies are.
    pub async fn read_listings(
        &self,
        creds: &StoreCredentials,
        query: &ReadQuery<'_>,
    ) -> (Result<ListingPage, ReadFailure>, Exchange) {
        let call = match self.build(creds, Target::Read(*query)) {
            Ok(c) => c,
            Err(why) => {
                let refused = PushOutcome::AuthRejected {
                    status: 0,
                    message: why,
                };
                return (Err(ReadFailure::Refused(refused)), not_sent());
            }
        };
        tracing::debug!(provider = %creds.provider, url = %call.url, "marketplace read");
        let answer = self.send(call, None).await;
        let mask = |text: &str| creds.redact(text);
        let result = match &answer.result {
            Err(message) => Err(ReadFailure::Transport(message.clone())),
            Ok((status, _, body)) if (200..300).contains(status) => {
                read::parse_listings(creds.provider, query, body)
                    .map(|page| redact_reasons(page, creds))
                    .map_err(ReadFailure::Malformed)
            }
            Ok((status, headers, body)) => Err(ReadFailure::Refused(
                classify(creds.provider, *status, headers, body, &mask).redacted(creds),
            )),
        };
        (result, answer.exchange(creds))
    }

    fn build(&self, creds: &StoreCredentials, target: Target<'_>) -> Result<Call, String> {
        let url = endpoint_url(&self.settings, creds.provider, &creds.seller_id, target)?;
        let (user, password) = match creds.provider {
            Provider::Trendyol => {
                let key = creds
                    .api_key
                    .as_deref()
                    .filter(|k| !k.is_empty())
                    .ok_or("Trendyol store without an api key")?;
                (key, creds.api_secret.as_str())
            }
            Provider::Hepsiburada => (creds.seller_id.as_str(), creds.api_secret.as_str()),
        };
        if creds.user_agent.trim().is_empty() {
            return Err(format!("{} store without a User-Agent", creds.provider));
        }
        if user.contains(':') {
            return Err(format!(
                "the {} Basic user name (api key / merchant id) contains ':'",
                creds.provider
            ));
        }
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut auth = HeaderValue::from_str(&format!("Basic {token}"))
            .map_err(|_| "credentials cannot form an Authorization header".to_string())?;
        auth.set_sensitive(true);
        let user_agent =
            HeaderValue::from_str(&creds.user_agent).map_err(|_| match creds.provider {
                Provider::Trendyol => "seller id cannot be sent in a User-Agent header".to_string(),
                Provider::Hepsiburada => {
                    "the Hepsiburada user agent is not a valid header".to_string()
                }
            })?;
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(USER_AGENT, user_agent);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let method = match target {
            Target::Push => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Method::POST
            }
            Target::Status(_) | Target::Read(_) => Method::GET,
        };
        Ok(Call {
            method,
            url,
            headers,
        })
    }

    async fn send(&self, call: Call, body: Option<Vec<u8>>) -> Answer {
        let started = Instant::now();
        let mut req = self
            .http
            .request(call.method, &call.url)
            .headers(call.headers);
        if let Some(body) = body {
            req = req.body(body);
        }
        // A connection that was never made (refused, DNS, TLS handshake) carried no body.
        let mut left = true;
        let result = match req.send().await {
            Err(e) => {
                left = !e.is_connect();
                Err(describe(&e, self.settings.timeout))
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                match read_limited(resp).await {
                    Ok(bytes) => Ok((
                        status,
                        headers,
                        String::from_utf8_lossy(&bytes).into_owned(),
                    )),
                    Err(e) => {
                        return Answer {
                            status: Some(status),
                            duration: started.elapsed(),
                            result: Err(e),
                            left,
                        }
                    }
                }
            }
        };
        Answer {
            status: result.as_ref().ok().map(|(s, _, _)| *s),
            duration: started.elapsed(),
            result,
            left,
        }
    }
}

/// An HTTP answer (status, headers, body text), or why there is none.
type Received = Result<(u16, HeaderMap, String), String>;

struct Answer {
    status: Option<u16>,
    duration: Duration,
    result: Received,
    /// The request may have reached the server (false only when no connection was made).
    left: bool,
}

impl Answer {
    /// What the api_log keeps: the body masked whole, then cut. The body of a 401/403 is not
    /// kept: a gateway refusing credentials is the likeliest to echo them in a form no mask
    /// foresees; the outcome carries its (masked) reason.
    fn exchange(&self, creds: &StoreCredentials) -> Exchange {
        let body = match &self.result {
            Ok((status @ (401 | 403), _, body)) => format!(
                "(body of the {status} answer not kept: {} bytes; the reason is in the outcome)",
                body.len()
            ),
            Ok((_, _, body)) => truncate_bytes(&creds.redact(body), EXCHANGE_BODY_LIMIT),
            Err(_) => String::new(),
        };
        Exchange {
            status: self.status,
            duration: self.duration,
            response_body: body,
        }
    }
}

fn not_sent() -> Exchange {
    Exchange {
        status: None,
        duration: Duration::ZERO,
        response_body: String::new(),
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > READ_LIMIT {
                    return Err(format!("response body larger than {READ_LIMIT} bytes"));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(format!("reading the response: {}", error_chain(&e))),
        }
    }
}

/// A transport error as text: kind first, then the cause chain (the URL holds no
/// credentials).
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    let chain = error_chain(e);
    if e.is_timeout() {
        format!("timeout after {} ms: {chain}", timeout.as_millis())
    } else if e.is_connect() {
        format!("connection failed: {chain}")
    } else {
        format!("request failed: {chain}")
    }
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Lock and freeze reasons are marketplace text: masked whole like a response body, then
/// cut to [`read::MAX_REASON_CHARS`].
fn redact_reasons(mut page: ListingPage, creds: &StoreCredentials) -> ListingPage {
    for listing in &mut page.listings {
        let flags = &mut listing.flags;
        for reasons in [&mut flags.locked, &mut flags.frozen].into_iter().flatten() {
            for reason in reasons.iter_mut() {
                *reason = creds
                    .redact(reason)
                    .chars()
                    .take(read::MAX_REASON_CHARS)
                    .collect();
            }
        }
    }
    page
}

/// `s` cut to at most `limit` bytes on a character boundary.
fn truncate_bytes(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Push,
    Status(&'a str),
    Read(ReadQuery<'a>),
}

/// The endpoint URL with every user-supplied segment percent-encoded.
fn endpoint_url(
    settings: &ClientSettings,
    provider: Provider,
    seller_id: &str,
    target: Target<'_>,
) -> Result<String, String> {
    let seller = segment(seller_id).map_err(|why| format!("seller id {why}"))?;
    let base = match provider {
        Provider::Trendyol => &settings.trendyol_url,
        Provider::Hepsiburada => &settings.hepsiburada_url,
    };
    let base = base.trim().trim_end_matches('/');
    let path = match (provider, target) {
        (Provider::Trendyol, Target::Push) => {
            format!("/integration/inventory/sellers/{seller}/products/price-and-inventory")
        }
        (Provider::Trendyol, Target::Status(id)) => format!(
            "/integration/product/sellers/{seller}/products/batch-requests/{}",
            segment(id).map_err(|why| format!("batch id {why}"))?
        ),
        (Provider::Hepsiburada, Target::Push) => {
            format!("/listings/merchantid/{seller}/stock-uploads")
        }
        (Provider::Hepsiburada, Target::Status(id)) => format!(
            "/listings/merchantid/{seller}/stock-uploads/id/{}",
            segment(id).map_err(|why| format!("upload id {why}"))?
        ),
        (provider, Target::Read(query)) => read::path(provider, &seller, &query),
    };
    Ok(format!("{base}{path}"))
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
/// Empty, `.` and `..` segments are refused: URL parsers resolve them even encoded.
fn segment(s: &str) -> Result<String, String> {
    if s.is_empty() || s == "." || s == ".." {
        return Err(format!("{s:?} cannot be a URL path segment"));
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClientSettings {
        ClientSettings {
            trendyol_url: "https://ty.example/".into(),
            hepsiburada_url: "https://hb.example/prefix".into(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn urls_are_encoded() {
        let s = settings();
        assert_eq!(
            endpoint_url(&s, Provider::Trendyol, "123456", Target::Push).unwrap(),
            "https://ty.example/integration/inventory/sellers/123456/products/price-and-inventory"
        );
        assert_eq!(
            endpoint_url(&s, Provider::Trendyol, "12 3/4?#%", Target::Status("a-1")).unwrap(),
            "https://ty.example/integration/product/sellers/12%203%2F4%3F%23%25/products/batch-requests/a-1"
        );
        assert_eq!(
            endpoint_url(&s, Provider::Hepsiburada, "m-ü", Target::Push).unwrap(),
            "https://hb.example/prefix/listings/merchantid/m-%C3%BC/stock-uploads"
        );
        assert_eq!(
            endpoint_url(&s, Provider::Hepsiburada, "m", Target::Status("x/y")).unwrap(),
            "https://hb.example/prefix/listings/merchantid/m/stock-uploads/id/x%2Fy"
        );
        for bad in ["", ".", ".."] {
            assert!(endpoint_url(&s, Provider::Trendyol, bad, Target::Push).is_err());
        }
    }

    #[test]
    fn build_headers_and_unusable_credentials() {
        let client = MarketplaceClient::new(settings());
        let ty = StoreCredentials {
            provider: Provider::Trendyol,
            seller_id: "42".into(),
            api_key: Some("key".into()),
            api_secret: "sec".into(),
            user_agent: "42 - SelfIntegration".into(),
        };
        let call = client.build(&ty, Target::Push).unwrap();
        assert_eq!(call.method, Method::POST);
        assert_eq!(call.headers[USER_AGENT], "42 - SelfIntegration");
        assert_eq!(call.headers[CONTENT_TYPE], "application/json");
        // base64("key:sec")
        assert_eq!(call.headers[AUTHORIZATION], "Basic a2V5OnNlYw==");
        assert!(call.headers[AUTHORIZATION].is_sensitive());

        let hb = StoreCredentials {
            provider: Provider::Hepsiburada,
            seller_id: "m1".into(),
            api_key: None,
            api_secret: "sk".into(),
            user_agent: "dev-user".into(),
        };
        let call = client.build(&hb, Target::Status("u1")).unwrap();
        assert_eq!(call.method, Method::GET);
        assert_eq!(call.headers[USER_AGENT], "dev-user");
        // base64("m1:sk")
        assert_eq!(call.headers[AUTHORIZATION], "Basic bTE6c2s=");

        let no_key = StoreCredentials {
            api_key: None,
            ..ty.clone()
        };
        assert!(client.build(&no_key, Target::Push).is_err());
        let colon = StoreCredentials {
            api_key: Some("a:b".into()),
            ..ty.clone()
        };
        assert!(client.build(&colon, Target::Push).is_err());
        let ctl = StoreCredentials {
            seller_id: "4\n2".into(),
            user_agent: "4\n2 - SelfIntegration".into(),
            ..ty.clone()
        };
        assert!(client.build(&ctl, Target::Push).is_err());
        let no_agent = StoreCredentials {
            user_agent: " ".into(),
            ..hb
        };
        assert!(
            client.build(&no_agent, Target::Push).is_err(),
            "nothing is sent without a user agent"
        );
    }

    #[test]
    fn redaction_and_truncation() {
        let creds = StoreCredentials {
            provider: Provider::Trendyol,
            seller_id: "42".into(),
            api_key: Some("the-key".into()),
            api_secret: "the-secret".into(),
            user_agent: "42 - SelfIntegration".into(),
        };
        let body = "echo the-key:the-secret Basic dGhlLWtleTp0aGUtc2VjcmV0 42";
        assert_eq!(creds.redact(body), "echo ***:*** Basic *** 42");
        // Escaped forms too; the merchant id is no secret (it is in every path).
        let hb = StoreCredentials {
            provider: Provider::Hepsiburada,
            seller_id: "m-1".into(),
            api_key: None,
            api_secret: "s\"k/1".into(),
            user_agent: "dev".into(),
        };
        assert_eq!(
            hb.redact(r#"{"echo":"m-1:s\"k/1","url":"s%22k%2F1"}"#),
            r#"{"echo":"m-1:***","url":"***"}"#
        );
        let long = "ü".repeat(3000);
        let t = truncate_bytes(&long, EXCHANGE_BODY_LIMIT);
        assert!(t.len() <= EXCHANGE_BODY_LIMIT && t.len() >= EXCHANGE_BODY_LIMIT - 1);
        assert!(long.starts_with(&t));
    }
}
