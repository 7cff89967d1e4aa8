// The same tables on both backends; matches what `diesel print-schema` prints.

diesel::table! {
    clients (id) {
        id -> Text,
        name -> Text,
        secret_hash -> Text,
        scopes -> Text,
        created_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    comments (id) {
        id -> Text,
        message_id -> Text,
        text -> Text,
        created_at -> Timestamp,
        author_client_id -> Nullable<Text>,
    }
}

diesel::table! {
    messages (id) {
        id -> Text,
        text -> Text,
        created_at -> Timestamp,
        author_client_id -> Nullable<Text>,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        private_key -> Text,
        public_key -> Text,
        created_at -> Timestamp,
        retired_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(comments -> messages (message_id));

diesel::allow_tables_to_appear_in_same_query!(clients, comments, messages, signing_keys);
