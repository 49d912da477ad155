//! The OpenAPI 3 document served at `/openapi.json`, generated from the handlers and wire types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::api;
use super::wire;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "outpaint",
        description = "Self-hosted image expansion, compatible with Kling AI's Image Expansion API. \
                       Every response is the envelope {code, message, request_id, data}; errors \
                       carry the codes of the API's error table."
    ),
    paths(
        api::create_simple,
        api::get_simple,
        api::list_simple,
        api::create_official,
        api::get_official,
        api::list_official
    ),
    components(schemas(
        wire::SimpleCreate,
        wire::OfficialCreate,
        wire::TaskObject,
        wire::TaskInfo,
        wire::TaskResult,
        wire::ResultImage,
        wire::WatermarkInfo,
        wire::ErrorResponse
    )),
    modifiers(&JwtScheme)
)]
struct ApiDoc;

/// Kling's bearer JWT (HS256, iss = access key, signed with the secret key).
struct JwtScheme;

impl Modify for JwtScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_lists_both_route_families() {
        let json = serde_json::to_value(super::document()).unwrap();
        let paths = json["paths"].as_object().unwrap();
        for path in [
            "/v1/images/expand",
            "/v1/images/expand/{id}",
            "/v1/images/editing/expand",
            "/v1/images/editing/expand/{id}",
        ] {
            assert!(paths.contains_key(path), "{path}");
        }
        assert!(json["components"]["schemas"]["TaskObject"].is_object());
    }
}
