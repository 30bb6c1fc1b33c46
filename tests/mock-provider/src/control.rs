//! The control API under `/__mock/`, for tests that drive the mock as a process.
//!
//! | method and path              | body                          | effect                      |
//! |------------------------------|-------------------------------|-----------------------------|
//! | `POST /__mock/behaviours`    | a `Behaviour` or an array     | queue one-shot behaviours   |
//! | `DELETE /__mock/behaviours`  |                               | empty the queue             |
//! | `GET /__mock/default`        |                               | the default behaviour       |
//! | `PUT /__mock/default`        | a `Behaviour`                 | replace the default         |
//! | `GET /__mock/requests`       |                               | the request log (JSON array)|
//! | `DELETE /__mock/requests`    |                               | clear log and counter       |
//! | `GET /__mock/stats`          |                               | `{"requests", "queued"}`    |
//!
//! Control requests are not logged, not counted, and consume no behaviour.

use http::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::behaviour::Behaviour;
use crate::body::Body;
use crate::server::{Shared, json};

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<Behaviour>),
    One(Box<Behaviour>),
}

fn bad_request(message: String) -> Response<Body> {
    json(
        StatusCode::BAD_REQUEST,
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

pub(crate) fn handle(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Response<Body> {
    match (method, path) {
        (&Method::POST, "behaviours") => match serde_json::from_slice::<OneOrMany>(body) {
            Ok(OneOrMany::One(b)) => {
                shared.behaviours.push(*b);
                json(
                    StatusCode::OK,
                    &json!({"queued": shared.behaviours.queued()}),
                )
            }
            Ok(OneOrMany::Many(bs)) => {
                bs.into_iter().for_each(|b| shared.behaviours.push(b));
                json(
                    StatusCode::OK,
                    &json!({"queued": shared.behaviours.queued()}),
                )
            }
            // Untagged errors say nothing useful; parse as one behaviour again for the message.
            Err(_) => match serde_json::from_slice::<Behaviour>(body) {
                Ok(_) => bad_request("invalid behaviour".to_owned()),
                Err(e) => bad_request(format!("invalid behaviour: {e}")),
            },
        },
        (&Method::DELETE, "behaviours") => {
            shared.behaviours.clear_queue();
            json(StatusCode::OK, &json!({"queued": 0}))
        }
        (&Method::GET, "default") => json(StatusCode::OK, &*shared.behaviours.default()),
        (&Method::PUT, "default") => match serde_json::from_slice::<Behaviour>(body) {
            Ok(b) => {
                shared.behaviours.set_default(b);
                json(StatusCode::OK, &*shared.behaviours.default())
            }
            Err(e) => bad_request(format!("invalid behaviour: {e}")),
        },
        (&Method::GET, "requests") => json(StatusCode::OK, &shared.log.snapshot()),
        (&Method::DELETE, "requests") => {
            shared.log.clear();
            json(StatusCode::OK, &json!({"cleared": true}))
        }
        (&Method::GET, "stats") => json(
            StatusCode::OK,
            &json!({"requests": shared.log.count(), "queued": shared.behaviours.queued()}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            &json!({"error": {"message": format!("no control endpoint {method} /__mock/{path}"),
                "type": "invalid_request_error", "param": null, "code": null}}),
        ),
    }
}
