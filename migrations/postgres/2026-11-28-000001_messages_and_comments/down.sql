DROP TABLE comments;
DROP TABLE messages;
