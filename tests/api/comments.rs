use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::assert_problem;

const UNKNOWN_MESSAGE: &str = "msg_01jd5x8w3k2m4n6p7q9r0s1t2v";

fn id(value: &Value) -> &str {
    value["id"].as_str().unwrap()
}

backend_tests! {
    async fn a_comment_is_created_and_fetched_from_its_location(app: &TestApp) {
        let message = app.create_message("a message").await;
        let path = format!("/messages/{}/comments", id(&message));

        let response = app.post_json(&path, &json!({"text": "first!"})).await;

        assert_eq!(response.status(), StatusCode::CREATED);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let comment: Value = response.json().await.unwrap();
        assert!(id(&comment).starts_with("cmt_"));
        assert_eq!(comment["message_id"], message["id"]);
        assert_eq!(comment["text"], "first!");
        assert_eq!(location, app.url(&format!("{path}/{}", id(&comment))));
        let fetched = app
            .client
            .get(&location)
            .bearer_auth(&app.user.token)
            .send()
            .await
            .unwrap();
        assert_eq!(fetched.status(), StatusCode::OK);
        assert_eq!(fetched.json::<Value>().await.unwrap(), comment);
    }

    async fn commenting_on_an_unknown_message_returns_404_and_stores_nothing(app: &TestApp) {
        let response = app
            .post_json(&format!("/messages/{UNKNOWN_MESSAGE}/comments"), &json!({"text": "hello?"}))
            .await;
        assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
        let list = app.get(&format!("/messages/{UNKNOWN_MESSAGE}/comments")).await;
        assert_problem(list, StatusCode::NOT_FOUND, "not-found").await;
    }

    async fn a_comment_is_not_found_under_another_message(app: &TestApp) {
        let first = app.create_message("one").await;
        let second = app.create_message("two").await;
        let comment = app.create_comment(id(&first), "on the first").await;

        let response = app.get(&format!("/messages/{}/comments/{}", id(&second), id(&comment))).await;

        assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
    }

    async fn malformed_comment_id_returns_400(app: &TestApp) {
        let message = app.create_message("m").await;
        let response = app.get(&format!("/messages/{}/comments/msg_01jd5x8w3k2m4n6p7q9r0s1t2v", id(&message))).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
        assert!(problem["detail"].as_str().unwrap().contains("comment id"), "{problem}");
    }

    async fn empty_comment_text_returns_422(app: &TestApp) {
        let message = app.create_message("m").await;
        let response = app.post_json(&format!("/messages/{}/comments", id(&message)), &json!({"text": ""})).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    }

    async fn comments_are_paged_oldest_first_without_gaps_or_repeats(app: &TestApp) {
        let message = app.create_message("busy thread").await;
        let other = app.create_message("another thread").await;
        let mut posted = Vec::new();
        for n in 0..7 {
            posted.push(id(&app.create_comment(id(&message), &format!("comment {n}")).await).to_owned());
            app.create_comment(id(&other), "noise").await;
        }

        let mut seen = Vec::new();
        let mut pages = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let query = match &after {
                Some(cursor) => format!("?limit=3&after={cursor}"),
                None => "?limit=3".to_owned(),
            };
            let response = app.get(&format!("/messages/{}/comments{query}", id(&message))).await;
            assert_eq!(response.status(), StatusCode::OK);
            let page: Value = response.json().await.unwrap();
            let data = page["data"].as_array().unwrap();
            pages.push((data.len(), page["has_more"].as_bool().unwrap()));
            seen.extend(data.iter().map(|c| id(c).to_owned()));
            after = Some(page["next_cursor"].as_str().unwrap().to_owned());
            if !page["has_more"].as_bool().unwrap() {
                break;
            }
        }

        assert_eq!(seen, posted);
        assert_eq!(pages, [(3, true), (3, true), (1, false)]);

        // The last cursor stays valid: a later comment appears after it.
        let late = app.create_comment(id(&message), "late").await;
        let response = app
            .get(&format!("/messages/{}/comments?after={}", id(&message), after.unwrap()))
            .await;
        let page: Value = response.json().await.unwrap();
        assert_eq!(page["data"].as_array().unwrap().iter().map(id).collect::<Vec<_>>(), [id(&late)]);
    }

    async fn an_empty_page_keeps_the_cursor(app: &TestApp) {
        let message = app.create_message("quiet").await;
        let first: Value = app.get(&format!("/messages/{}/comments", id(&message))).await.json().await.unwrap();
        assert_eq!(first["data"], json!([]));
        assert_eq!(first["has_more"], false);
        assert_eq!(first["next_cursor"], Value::Null);
    }

    async fn bad_page_parameters_return_400(app: &TestApp) {
        let message = app.create_message("m").await;
        for query in ["limit=0", "limit=100000", "limit=-1", "limit=abc", "after=garbage", "after=", "cursor=x"] {
            let response = app.get(&format!("/messages/{}/comments?{query}", id(&message))).await;
            assert_problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
        }
    }
}
