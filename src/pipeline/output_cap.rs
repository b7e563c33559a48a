//! A backend's `max_output_tokens`: the most output a request may ask of it. Coding
//! agents ask for 32000 tokens or more whatever model serves them, and a small local
//! model's server either refuses that (more than its context) or reserves room for it;
//! the cap lowers the request's `max_tokens` to what the backend can give. It only
//! lowers: a request that names no limit keeps none, so the model's own default applies.
//! Applied here, once per target, before any backend encodes the request, so every kind
//! and every client dialect is capped alike, and each fallback target by its own cap.

use std::borrow::Cow;

use super::Target;
use crate::chat::ChatRequest;

impl Target<'_> {
    /// The request as this target's backend is to get it: as it came, or with its
    /// `max_tokens` lowered to the backend's `max_output_tokens`.
    pub(super) fn capped<'x, 'a>(&self, request: &'x ChatRequest<'a>) -> Cow<'x, ChatRequest<'a>> {
        cap(self.max_output_tokens, request)
    }
}

fn cap<'x, 'a>(limit: Option<u64>, request: &'x ChatRequest<'a>) -> Cow<'x, ChatRequest<'a>> {
    match (limit, request.sampling.max_tokens) {
        (Some(limit), Some(asked)) if asked > limit => {
            let mut capped = request.clone();
            capped.sampling.max_tokens = Some(limit);
            Cow::Owned(capped)
        }
        _ => Cow::Borrowed(request),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Sampling;

    fn asking(max_tokens: Option<u64>) -> ChatRequest<'static> {
        let mut request = ChatRequest::new(Vec::new());
        request.sampling = Sampling {
            max_tokens,
            ..Sampling::default()
        };
        request
    }

    #[test]
    fn only_a_larger_ask_is_lowered() {
        let max = |limit, asked| cap(limit, &asking(asked)).sampling.max_tokens;
        assert_eq!(max(Some(4096), Some(32000)), Some(4096));
        assert_eq!(max(Some(4096), Some(100)), Some(100));
        assert_eq!(max(Some(4096), Some(4096)), Some(4096));
        // No ask stays no ask: the cap never fills one in.
        assert_eq!(max(Some(4096), None), None);
        assert_eq!(max(None, Some(32000)), Some(32000));
        assert!(matches!(
            cap(Some(4096), &asking(Some(10))),
            Cow::Borrowed(_)
        ));
    }
}
