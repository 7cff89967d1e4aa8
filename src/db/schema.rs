// The same tables on both backends; matches what `diesel print-schema` prints.

diesel::table! {
    clients (id) {
        id -> Text,
        name -> Text,
        secret_hash -> Text,
        scopes -> Text,
        created_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        workspace_id -> Text,
    }
}

diesel::table! {
    comments (id) {
        id -> Text,
        message_id -> Text,
        text -> Text,
        created_at -> Timestamp,
        author_client_id -> Nullable<Text>,
        workspace_id -> Text,
    }
}

diesel::table! {
    deliveries (id) {
        id -> Text,
        event_id -> Text,
        subscription_id -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        locked_until -> Nullable<Timestamp>,
        locked_by -> Nullable<Text>,
        last_status_code -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<Timestamp>,
        fetched_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    delivery_attempts (delivery_id, number) {
        delivery_id -> Text,
        number -> Integer,
        started_at -> Timestamp,
        duration_ms -> BigInt,
        status_code -> Nullable<Integer>,
        error -> Nullable<Text>,
        response_excerpt -> Nullable<Text>,
    }
}

diesel::table! {
    events (id) {
        id -> Text,
        event_type -> Text,
        resource_type -> Text,
        resource_id -> Text,
        resource_path -> Text,
        message_id -> Text,
        sequence -> BigInt,
        created_at -> Timestamp,
        feed_position -> Nullable<BigInt>,
        traceparent -> Nullable<Text>,
        workspace_id -> Text,
    }
}

diesel::table! {
    feed_state (id) {
        id -> Integer,
        last_position -> BigInt,
    }
}

diesel::table! {
    idempotency_keys (client_id, route, idempotency_key) {
        client_id -> Text,
        route -> Text,
        idempotency_key -> Text,
        fingerprint -> Text,
        status -> Integer,
        location -> Nullable<Text>,
        content_type -> Text,
        body -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    messages (id) {
        id -> Text,
        text -> Text,
        created_at -> Timestamp,
        author_client_id -> Nullable<Text>,
        last_sequence -> BigInt,
        workspace_id -> Text,
    }
}

diesel::table! {
    portal_link_uses (jti) {
        jti -> Text,
        client_id -> Text,
        used_at -> Timestamp,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        private_key -> Text,
        public_key -> Text,
        created_at -> Timestamp,
        retired_at -> Nullable<Timestamp>,
        purpose -> Text,
    }
}

diesel::table! {
    subscriptions (id) {
        id -> Text,
        owner_client_id -> Text,
        url -> Text,
        event_types -> Text,
        message_id -> Nullable<Text>,
        description -> Nullable<Text>,
        enabled -> Integer,
        disabled_reason -> Nullable<Text>,
        secret -> Text,
        previous_secret -> Nullable<Text>,
        previous_secret_expires_at -> Nullable<Timestamp>,
        failing_since -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        signature_scheme -> Text,
        format -> Text,
        verification -> Text,
        verification_due_at -> Nullable<Timestamp>,
        verification_attempts -> Integer,
        verification_error -> Nullable<Text>,
        verified_at -> Nullable<Timestamp>,
        allowed_rate -> Nullable<Integer>,
        workspace_id -> Text,
        last_success_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    workspaces (id) {
        id -> Text,
        name -> Text,
        created_at -> Timestamp,
        max_subscriptions -> Nullable<Integer>,
        api_per_second -> Nullable<Integer>,
        api_burst -> Nullable<Integer>,
        retention_days -> Nullable<Integer>,
        pruned_through -> BigInt,
    }
}

diesel::table! {
    workers (id) {
        id -> Text,
        lock_key -> BigInt,
        started_at -> Timestamp,
    }
}

diesel::joinable!(comments -> messages (message_id));
diesel::joinable!(deliveries -> events (event_id));
diesel::joinable!(deliveries -> subscriptions (subscription_id));
diesel::joinable!(delivery_attempts -> deliveries (delivery_id));

diesel::allow_tables_to_appear_in_same_query!(
    clients,
    comments,
    deliveries,
    delivery_attempts,
    events,
    feed_state,
    idempotency_keys,
    messages,
    portal_link_uses,
    signing_keys,
    subscriptions,
    workers,
    workspaces,
);
