//! The rest of the routes against every backend kind: generate, embeddings in both
//! dialects, show, ps and single-model lookup.

use base64::Engine;
use serde_json::{json, Value};

use crate::harness;

#[actix_web::test]
async fn generate_streams_response_lines_from_every_backend() {
    let gateway = harness::start("").await;
    for (model, expected) in [
        ("oa/mock-model", "Hello from the mock 🦀"),
        ("ol/mock-model", "Hello from the mock 🦀"),
        ("echo", "say this"),
    ] {
        let lines = gateway
            .post(
                "/api/generate",
                &json!({"model": model, "prompt": "say this"}),
            )
            .await
            .ndjson();
        let (last, pieces) = lines.split_last().unwrap();
        let text: String = pieces
            .iter()
            .map(|l| l["response"].as_str().unwrap())
            .collect();
        assert_eq!(text, expected, "{model}");
        assert!(pieces
            .iter()
            .all(|l| l.get("message").is_none() && l["done"] == false));
        assert_eq!(last["done"], true);
        assert_eq!(last["response"], "", "the key is always there");
        assert_eq!(last["context"], json!([]));
        assert!(last["eval_count"].is_u64() && last["total_duration"].is_u64());

        let body = gateway
            .post(
                "/api/generate",
                &json!({"model": model, "prompt": "say this", "stream": false}),
            )
            .await
            .json();
        assert_eq!(body["response"], expected);
        assert_eq!(body["done_reason"], "stop");
        assert_eq!(
            body["context"],
            json!([]),
            "some clients require context on a whole answer"
        );
    }
}

#[actix_web::test]
async fn generate_reaches_each_upstream_in_its_own_terms() {
    let gateway = harness::start("").await;
    gateway
        .post("/api/generate", &json!({"model": "oa/mock-g1", "prompt": "Why?", "system": "Be brief.", "stream": false, "options": {"num_predict": 9}}))
        .await;
    let sent = &gateway.mock.requests_for("mock-g1")[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}])
    );
    assert_eq!(sent.body["max_completion_tokens"], 9);

    // Raw and fill-in-the-middle prompts skip the chat template: the completions API.
    let answer = gateway
        .post("/api/generate", &json!({"model": "oa/mock-g2", "prompt": "def f(", "suffix": "    return x", "stream": false}))
        .await;
    assert_eq!(answer.json()["response"], "Hello from the mock 🦀");
    let sent = &gateway.mock.requests_for("mock-g2")[0];
    assert_eq!(sent.path, "/v1/completions");
    assert_eq!(
        (sent.body["prompt"].clone(), sent.body["suffix"].clone()),
        (json!("def f("), json!("    return x"))
    );

    gateway
        .post("/api/generate", &json!({"model": "ol/mock-g3", "prompt": "Why?", "system": "Be brief.", "suffix": "!", "images": ["iVBORw0KGgo="], "keep_alive": "5m", "stream": false}))
        .await;
    let sent = &gateway.mock.requests_for("mock-g3")[0];
    assert_eq!(sent.path, "/api/generate");
    for (key, value) in [
        ("prompt", json!("Why?")),
        ("system", json!("Be brief.")),
        ("suffix", json!("!")),
        ("images", json!(["iVBORw0KGgo="])),
        ("keep_alive", json!("5m")),
        ("stream", json!(false)),
    ] {
        assert_eq!(sent.body[key], value, "{key}");
    }
}

#[actix_web::test]
async fn generate_refuses_raw_with_a_system_prompt_and_loads_on_empty_prompt() {
    let gateway = harness::start("").await;
    let answer = gateway
        .post(
            "/api/generate",
            &json!({"model": "echo", "prompt": "x", "raw": true, "system": "s"}),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["error"].as_str().unwrap().contains("raw"));
    let body = gateway
        .post(
            "/api/generate",
            &json!({"model": "ol/mock-model", "prompt": ""}),
        )
        .await
        .json();
    assert_eq!(
        (
            body["done"].clone(),
            body["done_reason"].clone(),
            body["response"].clone()
        ),
        (json!(true), json!("load"), json!(""))
    );
}

fn decode_base64(text: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[actix_web::test]
async fn openai_embeddings_from_every_backend_as_floats_and_base64() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-e", "ol/mock-e", "echo"] {
        let floats = gateway
            .post(
                "/v1/embeddings",
                &json!({"model": model, "input": ["ab", "xyz"]}),
            )
            .await
            .json();
        assert_eq!(floats["object"], "list");
        assert_eq!(floats["model"], model);
        let data = floats["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        for (index, item) in data.iter().enumerate() {
            assert_eq!(
                (item["object"].clone(), item["index"].clone()),
                (json!("embedding"), json!(index))
            );
        }
        let first: Vec<f32> = serde_json::from_value(data[0]["embedding"].clone()).unwrap();
        if model != "echo" {
            // The mock's vector is (length, first byte, 1): order kept, whatever the upstream's.
            assert_eq!(first, vec![2.0, 97.0, 1.0], "{model}");
        }
        let encoded = gateway
            .post(
                "/v1/embeddings",
                &json!({"model": model, "input": "ab", "encoding_format": "base64"}),
            )
            .await
            .json();
        assert_eq!(
            decode_base64(encoded["data"][0]["embedding"].as_str().unwrap()),
            first,
            "{model}"
        );
        assert!(floats["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    }
    let sent = &gateway.mock.requests_for("mock-e");
    assert_eq!(sent[0].path, "/v1/embeddings");
    assert_eq!(
        sent[0].body["encoding_format"], "float",
        "floats are asked for upstream"
    );
    assert_eq!(sent[2].path, "/api/embed");
    let answer = gateway
        .post(
            "/v1/embeddings",
            &json!({"model": "echo", "input": [[1, 2]]}),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["param"], "input");
}

#[actix_web::test]
async fn ollama_embed_and_legacy_embeddings() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-f", "ol/mock-f", "echo"] {
        let body = gateway
            .post("/api/embed", &json!({"model": model, "input": ["ab", "c"]}))
            .await
            .json();
        assert_eq!(body["model"], model);
        assert_eq!(body["embeddings"].as_array().unwrap().len(), 2);
        assert!(
            body["total_duration"].is_u64()
                && body["load_duration"].is_u64()
                && body["prompt_eval_count"].is_u64()
        );
        let single = gateway
            .post("/api/embed", &json!({"model": model, "input": "ab"}))
            .await
            .json();
        assert_eq!(single["embeddings"][0], body["embeddings"][0]);
        let legacy = gateway
            .post("/api/embeddings", &json!({"model": model, "prompt": "ab"}))
            .await
            .json();
        assert_eq!(legacy["embedding"], body["embeddings"][0], "{model}");
    }
    // Nothing to embed: the model is only loaded, no upstream call.
    let empty = gateway
        .post("/api/embed", &json!({"model": "ol/mock-g"}))
        .await
        .json();
    assert_eq!(empty["embeddings"], json!([]));
    let legacy = gateway
        .post(
            "/api/embeddings",
            &json!({"model": "ol/mock-g", "prompt": ""}),
        )
        .await
        .json();
    assert_eq!(legacy, json!({"embedding": []}));
    assert!(gateway.mock.requests_for("mock-g").is_empty());
    let answer = gateway
        .post("/api/embed", &json!({"model": "echo", "input": [1]}))
        .await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["error"]
        .as_str()
        .unwrap()
        .contains("invalid input type"));
    // Ollama's own knobs reach Ollama.
    gateway.post("/api/embed", &json!({"model": "ol/mock-h", "input": "x", "truncate": false, "keep_alive": 0, "dimensions": 2})).await;
    let sent = &gateway.mock.requests_for("mock-h")[0].body;
    assert_eq!(
        (
            sent["truncate"].clone(),
            sent["keep_alive"].clone(),
            sent["dimensions"].clone()
        ),
        (json!(false), json!(0), json!(2))
    );
}

#[actix_web::test]
async fn show_describes_models_of_every_backend() {
    let gateway = harness::start("").await;
    let ollama = gateway
        .post("/api/show", &json!({"model": "ol/mock-model"}))
        .await
        .json();
    assert_eq!(ollama["details"]["family"], "llama");
    assert_eq!(ollama["model_info"]["llama.context_length"], 8192);
    for model in ["oa/mock-model", "echo"] {
        let shown = gateway.post("/api/show", &json!({"name": model})).await;
        assert_eq!(shown.status, 200, "{model}");
        let shown = shown.json();
        assert!(
            shown["model_info"].is_object(),
            "ollama-python needs model_info"
        );
        assert!(shown["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("completion")));
        assert!(shown["modified_at"].is_string());
    }
    let missing = gateway
        .post("/api/show", &json!({"model": "ol/mock-status404"}))
        .await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .contains("not found"));
}

#[actix_web::test]
async fn ps_lists_loaded_models_with_their_prefix() {
    let gateway = harness::start("").await;
    let ps = gateway.get("/api/ps").await.json();
    let models = ps["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["name"], "ol/mock-model:latest");
    assert_eq!(models[0]["model"], "ol/mock-model:latest");
    assert_eq!(models[0]["size_vram"], 5_137_025_024u64);
}

#[actix_web::test]
async fn one_model_by_id() {
    let gateway = harness::start("").await;
    let model: Value = gateway.get("/v1/models/ol/mock-model:latest").await.json();
    assert_eq!(
        (model["id"].clone(), model["object"].clone()),
        (json!("ol/mock-model:latest"), json!("model"))
    );
    // A model its backend does not list is not found.
    let missing = gateway.get("/v1/models/ol/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "model_not_found");
}

#[actix_web::test]
async fn every_name_a_chat_accepts_has_an_entry() {
    let gateway = harness::start_config(
        "[server]\nlisten = \"127.0.0.1:0\"\n[routing]\ndefault_backend = \"ol\"\n[[backends]]\nname = \"ol\"\nkind = \"ollama\"\nurl = \"{mock}\"\n[[backends]]\nname = \"echo\"\nkind = \"echo\"\n[[models]]\nname = \"chat\"\ntargets = [\"ol/mock-model:latest\"]\n",
    )
    .await;
    // Unprefixed, through the default backend's listing; an alias; echo takes any name.
    for id in ["mock-model:latest", "chat", "echo/echo", "echo/anything"] {
        let answer = gateway.get(&format!("/v1/models/{id}")).await;
        assert_eq!(answer.status, 200, "{id}: {}", answer.body);
        assert_eq!(answer.json()["id"], id);
        let show = gateway.post("/api/show", &json!({"model": id})).await;
        assert_eq!(show.status, 200, "/api/show {id}: {}", show.body);
    }
    for id in ["not-there", "ol/not-there"] {
        let answer = gateway.get(&format!("/v1/models/{id}")).await;
        assert_eq!(answer.status, 404, "{id}");
    }
}
