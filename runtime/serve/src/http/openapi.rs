//! `GET /openapi.json`: the REST API's OpenAPI document (`serve/openapi.json`, kept in step with
//! [`super::route_table`] by a test), with this server's model names, versions and PNG limit
//! filled in so that schema-driven clients (schemathesis) reach the real models.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::ServerState;

/// The document as written in the repository.
pub(crate) const OPENAPI_JSON: &str = include_str!("../../openapi.json");

pub(super) async fn document(State(state): State<Arc<ServerState>>) -> Json<Value> {
    let names: BTreeSet<&str> = state.models.iter().map(|m| m.name()).collect();
    let versions: BTreeSet<&str> = state.models.iter().map(|m| m.version()).collect();
    Json(specialise(
        names.into_iter().collect(),
        versions.into_iter().collect(),
        state.options.max_png_images,
    ))
}

/// The repository's document with `name` and `version` limited to the served ones and the
/// `generate` endpoint's `n` to `max_png_images`.
pub(crate) fn specialise(names: Vec<&str>, versions: Vec<&str>, max_png_images: usize) -> Value {
    let mut doc: Value =
        serde_json::from_str(OPENAPI_JSON).expect("serve/openapi.json is valid JSON (tested)");
    let parameters = &mut doc["components"]["parameters"];
    parameters["ModelName"]["schema"]["enum"] = json!(names);
    parameters["ModelVersion"]["schema"]["enum"] = json!(versions);
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            if !path.ends_with("/generate") {
                continue;
            }
            for parameter in item["get"]["parameters"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if parameter["name"] == "n" {
                    parameter["schema"]["maximum"] = json!(max_png_images);
                }
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every (method, path) the document lists, lower-case methods as OpenAPI writes them.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    all.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        all
    }

    #[test]
    fn the_document_lists_exactly_the_routes_the_server_answers() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let served: BTreeSet<(String, String)> = crate::http::route_table()
            .into_iter()
            .map(|(m, p)| (m.to_string(), p))
            .collect();
        let listed = documented(&doc);
        let undocumented: Vec<_> = served.difference(&listed).collect();
        let missing: Vec<_> = listed.difference(&served).collect();
        assert!(
            undocumented.is_empty() && missing.is_empty(),
            "served but not in serve/openapi.json: {undocumented:?}; documented but not served: {missing:?}"
        );
    }

    #[test]
    fn every_reference_resolves_and_every_operation_documents_its_errors() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        out.push(r.clone());
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 20);
        for r in all {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                assert!(
                    operation["responses"]["default"]["$ref"] == "#/components/responses/Error",
                    "{method} {path} does not document the protocol's error body"
                );
            }
        }
    }

    #[test]
    fn the_served_document_names_the_served_models_and_limits() {
        let doc = specialise(vec!["a", "b"], vec!["1", "2"], 32);
        assert_eq!(
            doc["components"]["parameters"]["ModelName"]["schema"]["enum"],
            json!(["a", "b"])
        );
        assert_eq!(
            doc["components"]["parameters"]["ModelVersion"]["schema"]["enum"],
            json!(["1", "2"])
        );
        let n = doc["paths"]["/v2/models/{name}/versions/{version}/generate"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "n")
            .unwrap();
        assert_eq!(n["schema"]["maximum"], json!(32));
    }
}
