//! The built-in backend with no upstream: it answers with the last user message, one
//! word per chunk. It lets people try the gateway without a model, gives clients'
//! tests a predictable peer, and measures the gateway's own cost.

use futures::stream;

use sha2::{Digest, Sha256};

use crate::chat::{ChatRequest, Event, EventStream, FinishReason, Role, Usage};
use crate::embed::{EmbedRequest, Embeddings};

use super::ModelEntry;

/// Dimensions of echo's vectors: two bytes of a SHA-256 digest each.
pub const ECHO_DIMENSIONS: usize = 16;

/// The echo backend (stateless).
pub struct EchoBackend;

/// Cuts text into words, each keeping the whitespace that follows it (leading
/// whitespace stays with the first word), so the pieces join back into the text.
pub fn pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    let mut seen_word = false;
    for (at, ch) in text.char_indices() {
        if ch.is_whitespace() {
            in_space = true;
        } else {
            if in_space && seen_word {
                pieces.push(&text[start..at]);
                start = at;
            }
            in_space = false;
            seen_word = true;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

impl EchoBackend {
    /// Answers at once with the last user message's text.
    pub fn chat(&self, request: &ChatRequest) -> EventStream {
        let prompt_tokens = request
            .messages
            .iter()
            .map(|m| pieces(&m.joined_text()).len() as u64)
            .sum();
        let text = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.joined_text())
            .unwrap_or_default();
        let all = pieces(&text);
        let limit = request
            .sampling
            .max_tokens
            .map_or(usize::MAX, |n| n as usize);
        let finish = if all.len() > limit {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let mut events: Vec<Event> = all
            .iter()
            .take(limit)
            .map(|piece| Event::Text((*piece).to_owned()))
            .collect();
        let completion_tokens = events.len() as u64;
        events.push(Event::Finish(finish));
        events.push(Event::Usage(Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        }));
        Box::pin(stream::iter(events.into_iter().map(Ok)))
    }

    /// Embeds each input as a small unit vector derived from its bytes: the same text
    /// always gives the same vector, different texts different ones.
    pub fn embed(request: &EmbedRequest) -> Embeddings {
        let dimensions = request
            .dimensions
            .map_or(ECHO_DIMENSIONS, |d| (d as usize).clamp(1, ECHO_DIMENSIONS));
        let vectors = request
            .inputs
            .iter()
            .map(|input| {
                let digest = Sha256::digest(input.as_bytes());
                let raw: Vec<f32> = digest
                    .chunks(2)
                    .take(dimensions)
                    .map(|pair| f32::from(u16::from_le_bytes([pair[0], pair[1]])) / 32767.5 - 1.0)
                    .collect();
                let norm = raw
                    .iter()
                    .map(|x| x * x)
                    .sum::<f32>()
                    .sqrt()
                    .max(f32::EPSILON);
                raw.into_iter().map(|x| x / norm).collect()
            })
            .collect();
        Embeddings {
            vectors,
            prompt_tokens: request.inputs.iter().map(|i| pieces(i).len() as u64).sum(),
        }
    }

    /// Its one model.
    pub fn models() -> Vec<ModelEntry> {
        vec![ModelEntry {
            id: "echo".to_owned(),
            owned_by: Some("switchyard".to_owned()),
            ..ModelEntry::default()
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Completion, Message, Part};

    /// Claude Code's turn: a user message of several blocks, then a system message, and
    /// later tool results; the echo is the whole last user message's text.
    #[test]
    fn the_echo_is_the_last_user_message_whatever_follows_it() {
        let user = Message {
            parts: vec![Part::Text("<reminder>".into()), Part::Text("run it".into())],
            ..Message::text(Role::User, "")
        };
        let tool = Message {
            tool_call_id: Some("t".into()),
            ..Message::text(Role::Tool, "TOOL-OK")
        };
        let request = ChatRequest::new(vec![
            Message::text(Role::System, "sys"),
            Message::text(Role::User, "earlier"),
            user,
            Message::text(Role::System, "environment"),
            Message::text(Role::Assistant, "calling"),
            tool,
        ]);
        let completion =
            futures::executor::block_on(Completion::collect(EchoBackend.chat(&request))).unwrap();
        assert_eq!(completion.text, "<reminder>\nrun it");
        assert_eq!(completion.finish_reason, Some(FinishReason::Stop));
    }

    #[test]
    fn pieces_keep_whitespace_and_join_back() {
        assert_eq!(pieces("hi there"), vec!["hi ", "there"]);
        assert_eq!(pieces("  a  b\n"), vec!["  a  ", "b\n"]);
        assert_eq!(pieces(""), Vec::<&str>::new());
        assert_eq!(pieces("héllo wörld 🦀"), vec!["héllo ", "wörld ", "🦀"]);
        for text in ["x", " lead", "trail ", "a\tb\nc  d"] {
            assert_eq!(pieces(text).concat(), text);
        }
    }
}
