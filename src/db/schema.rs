// The same tables on both backends; matches what `diesel print-schema` prints.

diesel::table! {
    comments (id) {
        id -> Text,
        message_id -> Text,
        text -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    messages (id) {
        id -> Text,
        text -> Text,
        created_at -> Timestamp,
    }
}

diesel::joinable!(comments -> messages (message_id));

diesel::allow_tables_to_appear_in_same_query!(comments, messages);
