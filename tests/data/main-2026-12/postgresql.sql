--
-- PostgreSQL database dump
--


-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: authz_fixture; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA authz_fixture;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: addons; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.addons (
    resource_id text NOT NULL,
    app_id text NOT NULL,
    app_name text NOT NULL,
    plan text NOT NULL,
    region text NOT NULL,
    state text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    sso_sha256_since double precision,
    CONSTRAINT addons_state_check CHECK ((state = ANY (ARRAY['provisioned'::text, 'deprovisioned'::text])))
);


--
-- Name: audit_anchor; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.audit_anchor (
    seq bigint NOT NULL,
    hash text NOT NULL,
    pruned_at double precision,
    cutoff double precision,
    pruned_count bigint
);


--
-- Name: audit_event; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.audit_event (
    seq bigint NOT NULL,
    kind text NOT NULL,
    "time" double precision NOT NULL,
    record text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);


--
-- Name: audit_head; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.audit_head (
    id integer NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL
);


--
-- Name: audit_log; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.audit_log (
    seq bigint NOT NULL,
    decision_id text NOT NULL,
    "time" double precision NOT NULL,
    kind text NOT NULL,
    caller text,
    request_id text,
    principal_type text,
    principal_id text,
    action text,
    resource_type text,
    resource_id text,
    app_id text,
    effect text NOT NULL,
    policy_revision text,
    rule_ids text NOT NULL,
    record text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);


--
-- Name: audit_part; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.audit_part (
    hash text NOT NULL,
    body text NOT NULL
);


--
-- Name: audit_part_use; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.audit_part_use (
    hash text NOT NULL,
    last_seq bigint NOT NULL
);


--
-- Name: audit_rule; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.audit_rule (
    id bigint NOT NULL,
    seq bigint NOT NULL,
    policy text,
    rule_id text NOT NULL,
    effect text
);


--
-- Name: audit_rule_id_seq; Type: SEQUENCE; Schema: authz_fixture; Owner: -
--

ALTER TABLE authz_fixture.audit_rule ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME authz_fixture.audit_rule_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: audit_schema_version; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.audit_schema_version (
    version integer NOT NULL,
    applied_at double precision NOT NULL
);


--
-- Name: heroku_oauth_tokens; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.heroku_oauth_tokens (
    resource_id text NOT NULL,
    key_id text NOT NULL,
    nonce bytea NOT NULL,
    ciphertext bytea NOT NULL,
    expires_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    grant_sha256 text
);


--
-- Name: heroku_webhooks; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.heroku_webhooks (
    resource_id text NOT NULL,
    webhook_id text NOT NULL,
    url text NOT NULL,
    key_id text NOT NULL,
    nonce bytea NOT NULL,
    ciphertext bytea NOT NULL,
    created_at double precision NOT NULL
);


--
-- Name: schema_migrations; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at double precision NOT NULL
);


--
-- Name: sessions; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.sessions (
    token_sha256 text NOT NULL,
    session_id text NOT NULL,
    user_id text NOT NULL,
    resource_id text NOT NULL,
    email text NOT NULL,
    issued_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    revoked_at double precision,
    token_kind text DEFAULT 'unknown'::text NOT NULL
);


--
-- Name: sso_replay; Type: TABLE; Schema: authz_fixture; Owner: -
--

CREATE TABLE authz_fixture.sso_replay (
    replay_key text NOT NULL,
    expires_at double precision NOT NULL
);


--
-- Data for Name: addons; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--

INSERT INTO authz_fixture.addons VALUES ('a-1', 'app-1', 'demo', 'basic', 'us', 'provisioned', 1764547200, 1764547200, NULL);


--
-- Data for Name: audit_anchor; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--

INSERT INTO authz_fixture.audit_anchor VALUES (3, 'ccbf0d84469beb6acc2dd7708759992e09e4e029a3bd8f4d4b5af04bad3add2c', 1796094900.4979894, 1764547202.000002, 3);


--
-- Data for Name: audit_event; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--

INSERT INTO authz_fixture.audit_event VALUES (10, 'prune', 1796094900.4979894, '{"cutoff":1764547202.000002,"event":"prune","previous":null,"through":{"hash":"ccbf0d84469beb6acc2dd7708759992e09e4e029a3bd8f4d4b5af04bad3add2c","seq":3},"time":1796094900.4979894,"verified":true}', '2347dc3ad4cd5cab69cd276a7265bf95f7fe06b78c77e040e0219a2e5c70e73f', '5b2c4c086b21da581b9c8580c9bf743ced6a2cd37f59a3b38cf4286a7633b67b');


--
-- Data for Name: audit_head; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--

INSERT INTO authz_fixture.audit_head VALUES (1, 10, '5b2c4c086b21da581b9c8580c9bf743ced6a2cd37f59a3b38cf4286a7633b67b');


--
-- Data for Name: audit_log; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--

INSERT INTO authz_fixture.audit_log VALUES (4, '00000000-0000-7000-8000-000000000003', 1764547203, 'check', 'billing', 'req-000000000003', 'user', 'u-1', 'account.read', 'addon', 'a-1', 'app-1', 'ALLOW', 'rev-1', '["owner-reads"]', '{"action":"account.read","app_id":"app-1","caller":"billing","decision_id":"00000000-0000-7000-8000-000000000003","duration_ms":0.42,"effect":"ALLOW","errors":[],"input":{"access":{"age_seconds":12.5,"fetched_at":1764547190.5,"role":"owner"},"action":"account.read","context":{"ip":"[redacted]"},"now":"2025-12-01T00:00:03.000000Z","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"resource":{"app_id":"app-1","id":"a-1","type":"addon"}},"kind":"check","matched_rules":[{"effect":"ALLOW","policy":"base","reason":"owners may read","rule_id":"owner-reads"}],"policy_revision":"rev-1","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"reasons":["owners may read"],"request_id":"req-000000000003","resource":{"id":"a-1","type":"addon"},"time":1764547203.0}', 'ccbf0d84469beb6acc2dd7708759992e09e4e029a3bd8f4d4b5af04bad3add2c', 'a65f9fecf4a4f76ffa9e15ecda9082c0009541094d0b86cbe3f1ed5b2c3978a3');
INSERT INTO authz_fixture.audit_log VALUES (5, '00000000-0000-7000-8000-000000000004', 1764547204, 'check', 'billing', 'req-000000000004', 'user', 'u-1', 'account.read', 'addon', 'a-1', 'app-1', 'DENY', 'rev-1', '[]', '{"action":"account.read","app_id":"app-1","caller":"billing","decision_id":"00000000-0000-7000-8000-000000000004","duration_ms":0.42,"effect":"DENY","errors":[],"input":{"access":{"age_seconds":12.5,"fetched_at":1764547191.5,"role":"owner"},"action":"account.read","context":{"ip":"[redacted]"},"now":"2025-12-01T00:00:04.000000Z","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"resource":{"app_id":"app-1","id":"a-1","type":"addon"}},"kind":"check","matched_rules":[],"policy_revision":"rev-1","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"reasons":["no allow rule matched action ''account.read'' (default deny)"],"request_id":"req-000000000004","resource":{"id":"a-1","type":"addon"},"time":1764547204.0}', 'a65f9fecf4a4f76ffa9e15ecda9082c0009541094d0b86cbe3f1ed5b2c3978a3', 'fc95826df8516c7ac17a484ba8383c36b3846bce94856303ec566b4a7b7ca83c');
INSERT INTO authz_fixture.audit_log VALUES (6, '00000000-0000-7000-8000-000000000005', 1764547205, 'check', 'billing', 'req-000000000005', 'user', 'u-1', 'account.read', 'addon', 'a-1', 'app-1', 'ALLOW', 'rev-1', '["owner-reads"]', '{"action":"account.read","app_id":"app-1","caller":"billing","decision_id":"00000000-0000-7000-8000-000000000005","duration_ms":0.42,"effect":"ALLOW","errors":[],"input":{"access":{"age_seconds":12.5,"fetched_at":1764547192.5,"role":"owner"},"action":"account.read","context":{"ip":"[redacted]"},"now":"2025-12-01T00:00:05.000000Z","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"resource":{"app_id":"app-1","id":"a-1","type":"addon"}},"kind":"check","matched_rules":[{"effect":"ALLOW","policy":"base","reason":"owners may read","rule_id":"owner-reads"}],"policy_revision":"rev-1","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"reasons":["owners may read"],"request_id":"req-000000000005","resource":{"id":"a-1","type":"addon"},"time":1764547205.0}', 'fc95826df8516c7ac17a484ba8383c36b3846bce94856303ec566b4a7b7ca83c', '6bee97af0693b190ee56bfda7ea01bc87aa993a69bfb5c57138fe2d7c0eaf585');
INSERT INTO authz_fixture.audit_log VALUES (7, '00000000-0000-7000-8000-00000000010', 1764547210, 'check', 'billing', 'req--00000000010', 'user', 'u-1', 'account.read', 'addon', 'a-1', 'app-1', 'ALLOW', 'rev-1', '["owner-reads"]', '{"action":"account.read","app_id":"app-1","caller":"billing","decision_id":"00000000-0000-7000-8000-00000000010","duration_ms":0.42,"effect":"ALLOW","errors":[],"input":{"access":{"age_seconds":12.5,"fetched_at":1764547197.5,"role":"owner"},"action":"account.read","context":{"ip":"[redacted]"},"now":"2025-12-01T00:00:10.000000Z","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"resource":{"app_id":"app-1","id":"a-1","type":"addon"}},"kind":"check","matched_rules":[{"effect":"ALLOW","policy":"base","reason":"owners and collaborators may read","rule_id":"owner-reads"}],"parts":{"input.principal":"19dd67c7de814fc7a51421f6db4c4a05969e82a8db4cb60cc635bc06400b4b0c"},"policy_revision":"rev-1","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"reasons":["owners and collaborators may read"],"request_id":"req--00000000010","resource":{"id":"a-1","type":"addon"},"time":1764547210.0}', '6bee97af0693b190ee56bfda7ea01bc87aa993a69bfb5c57138fe2d7c0eaf585', '0173ab070a6fe3a0469343775487dc7ba7cf74151deef44af5d7a9c2905dc5ba');
INSERT INTO authz_fixture.audit_log VALUES (8, '00000000-0000-7000-8000-00000000011', 1764547211, 'check', 'billing', 'req--00000000011', 'user', 'u-1', 'account.read', 'addon', 'a-1', 'app-1', 'ALLOW', 'rev-1', '["owner-reads"]', '{"action":"account.read","app_id":"app-1","caller":"billing","decision_id":"00000000-0000-7000-8000-00000000011","duration_ms":0.42,"effect":"ALLOW","errors":[],"input":{"access":{"age_seconds":12.5,"fetched_at":1764547198.5,"role":"owner"},"action":"account.read","context":{"ip":"[redacted]"},"now":"2025-12-01T00:00:11.000000Z","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"resource":{"app_id":"app-1","id":"a-1","type":"addon"}},"kind":"check","matched_rules":[{"effect":"ALLOW","policy":"base","reason":"owners and collaborators may read","rule_id":"owner-reads"}],"parts":{"input.principal":"19dd67c7de814fc7a51421f6db4c4a05969e82a8db4cb60cc635bc06400b4b0c"},"policy_revision":"rev-1","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"reasons":["owners and collaborators may read"],"request_id":"req--00000000011","resource":{"id":"a-1","type":"addon"},"time":1764547211.0}', '0173ab070a6fe3a0469343775487dc7ba7cf74151deef44af5d7a9c2905dc5ba', '8c35ae047cb9f89e6e5e697bb4b6fc8a55db6f23aebb3e776a572f13a3b40904');
INSERT INTO authz_fixture.audit_log VALUES (9, '00000000-0000-7000-8000-00000000012', 1764547212, 'check', 'billing', 'req--00000000012', 'user', 'u-1', 'account.read', 'addon', 'a-1', 'app-1', 'ALLOW', 'rev-1', '["owner-reads"]', '{"action":"account.read","app_id":"app-1","caller":"billing","decision_id":"00000000-0000-7000-8000-00000000012","duration_ms":0.42,"effect":"ALLOW","errors":[],"input":{"access":{"age_seconds":12.5,"fetched_at":1764547199.5,"role":"owner"},"action":"account.read","context":{"ip":"[redacted]"},"now":"2025-12-01T00:00:12.000000Z","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"resource":{"app_id":"app-1","id":"a-1","type":"addon"}},"kind":"check","matched_rules":[{"effect":"ALLOW","policy":"base","reason":"owners and collaborators may read","rule_id":"owner-reads"}],"parts":{"input.principal":"19dd67c7de814fc7a51421f6db4c4a05969e82a8db4cb60cc635bc06400b4b0c"},"policy_revision":"rev-1","principal":{"display":{"email":"alice@example.com"},"id":"u-1","type":"user"},"reasons":["owners and collaborators may read"],"request_id":"req--00000000012","resource":{"id":"a-1","type":"addon"},"time":1764547212.0}', '8c35ae047cb9f89e6e5e697bb4b6fc8a55db6f23aebb3e776a572f13a3b40904', '2347dc3ad4cd5cab69cd276a7265bf95f7fe06b78c77e040e0219a2e5c70e73f');


--
-- Data for Name: audit_part; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--

INSERT INTO authz_fixture.audit_part VALUES ('19dd67c7de814fc7a51421f6db4c4a05969e82a8db4cb60cc635bc06400b4b0c', '{"attributes":{"note":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"id":"u-9","type":"heroku_user"}');


--
-- Data for Name: audit_part_use; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--

INSERT INTO authz_fixture.audit_part_use VALUES ('19dd67c7de814fc7a51421f6db4c4a05969e82a8db4cb60cc635bc06400b4b0c', 9);


--
-- Data for Name: audit_rule; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--

INSERT INTO authz_fixture.audit_rule OVERRIDING SYSTEM VALUE VALUES (2, 4, 'base', 'owner-reads', 'ALLOW');
INSERT INTO authz_fixture.audit_rule OVERRIDING SYSTEM VALUE VALUES (3, 6, 'base', 'owner-reads', 'ALLOW');
INSERT INTO authz_fixture.audit_rule OVERRIDING SYSTEM VALUE VALUES (4, 7, 'base', 'owner-reads', 'ALLOW');
INSERT INTO authz_fixture.audit_rule OVERRIDING SYSTEM VALUE VALUES (5, 8, 'base', 'owner-reads', 'ALLOW');
INSERT INTO authz_fixture.audit_rule OVERRIDING SYSTEM VALUE VALUES (6, 9, 'base', 'owner-reads', 'ALLOW');


--
-- Data for Name: audit_schema_version; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--

INSERT INTO authz_fixture.audit_schema_version VALUES (1, 1796094900.4663687);
INSERT INTO authz_fixture.audit_schema_version VALUES (2, 1796094900.4744277);


--
-- Data for Name: heroku_oauth_tokens; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--



--
-- Data for Name: heroku_webhooks; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--



--
-- Data for Name: schema_migrations; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--

INSERT INTO authz_fixture.schema_migrations VALUES (1, 'add-on registry', 1796094900.4213727);
INSERT INTO authz_fixture.schema_migrations VALUES (2, 'sessions', 1796094900.4263582);
INSERT INTO authz_fixture.schema_migrations VALUES (3, 'SSO replay guard', 1796094900.4294157);
INSERT INTO authz_fixture.schema_migrations VALUES (4, 'Heroku OAuth tokens', 1796094900.4316254);
INSERT INTO authz_fixture.schema_migrations VALUES (5, 'SSO token kinds', 1796094900.432844);
INSERT INTO authz_fixture.schema_migrations VALUES (6, 'forget the OAuth tokens of deprovisioned add-ons', 1796094900.433815);
INSERT INTO authz_fixture.schema_migrations VALUES (7, 'add-on webhooks and provisioning retries', 1796094900.4371433);


--
-- Data for Name: sessions; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--



--
-- Data for Name: sso_replay; Type: TABLE DATA; Schema: authz_fixture; Owner: -
--



--
-- Name: audit_rule_id_seq; Type: SEQUENCE SET; Schema: authz_fixture; Owner: -
--

SELECT pg_catalog.setval('authz_fixture.audit_rule_id_seq', 6, true);


--
-- Name: addons addons_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.addons
    ADD CONSTRAINT addons_pkey PRIMARY KEY (resource_id);


--
-- Name: audit_anchor audit_anchor_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.audit_anchor
    ADD CONSTRAINT audit_anchor_pkey PRIMARY KEY (seq);


--
-- Name: audit_event audit_event_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.audit_event
    ADD CONSTRAINT audit_event_pkey PRIMARY KEY (seq);


--
-- Name: audit_head audit_head_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.audit_head
    ADD CONSTRAINT audit_head_pkey PRIMARY KEY (id);


--
-- Name: audit_log audit_log_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (seq);


--
-- Name: audit_part audit_part_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.audit_part
    ADD CONSTRAINT audit_part_pkey PRIMARY KEY (hash);


--
-- Name: audit_part_use audit_part_use_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.audit_part_use
    ADD CONSTRAINT audit_part_use_pkey PRIMARY KEY (hash);


--
-- Name: audit_rule audit_rule_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.audit_rule
    ADD CONSTRAINT audit_rule_pkey PRIMARY KEY (id);


--
-- Name: audit_schema_version audit_schema_version_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.audit_schema_version
    ADD CONSTRAINT audit_schema_version_pkey PRIMARY KEY (version);


--
-- Name: heroku_oauth_tokens heroku_oauth_tokens_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.heroku_oauth_tokens
    ADD CONSTRAINT heroku_oauth_tokens_pkey PRIMARY KEY (resource_id);


--
-- Name: heroku_webhooks heroku_webhooks_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.heroku_webhooks
    ADD CONSTRAINT heroku_webhooks_pkey PRIMARY KEY (resource_id);


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: sessions sessions_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (token_sha256);


--
-- Name: sessions sessions_session_id_key; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.sessions
    ADD CONSTRAINT sessions_session_id_key UNIQUE (session_id);


--
-- Name: sso_replay sso_replay_pkey; Type: CONSTRAINT; Schema: authz_fixture; Owner: -
--

ALTER TABLE ONLY authz_fixture.sso_replay
    ADD CONSTRAINT sso_replay_pkey PRIMARY KEY (replay_key);


--
-- Name: audit_log_action_time; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX audit_log_action_time ON authz_fixture.audit_log USING btree (action, "time");


--
-- Name: audit_log_app_id_time; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX audit_log_app_id_time ON authz_fixture.audit_log USING btree (app_id, "time");


--
-- Name: audit_log_decision_id; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE UNIQUE INDEX audit_log_decision_id ON authz_fixture.audit_log USING btree (decision_id);


--
-- Name: audit_log_policy_revision_time; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX audit_log_policy_revision_time ON authz_fixture.audit_log USING btree (policy_revision, "time");


--
-- Name: audit_log_principal_id_time; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX audit_log_principal_id_time ON authz_fixture.audit_log USING btree (principal_id, "time");


--
-- Name: audit_log_resource_id_time; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX audit_log_resource_id_time ON authz_fixture.audit_log USING btree (resource_id, "time");


--
-- Name: audit_log_time; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX audit_log_time ON authz_fixture.audit_log USING btree ("time");


--
-- Name: audit_part_use_last_seq; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX audit_part_use_last_seq ON authz_fixture.audit_part_use USING btree (last_seq);


--
-- Name: audit_rule_rule_id_seq; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX audit_rule_rule_id_seq ON authz_fixture.audit_rule USING btree (rule_id, seq);


--
-- Name: audit_rule_seq; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX audit_rule_seq ON authz_fixture.audit_rule USING btree (seq);


--
-- Name: sessions_expires_at; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX sessions_expires_at ON authz_fixture.sessions USING btree (expires_at);


--
-- Name: sessions_resource_id; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX sessions_resource_id ON authz_fixture.sessions USING btree (resource_id);


--
-- Name: sso_replay_expires_at; Type: INDEX; Schema: authz_fixture; Owner: -
--

CREATE INDEX sso_replay_expires_at ON authz_fixture.sso_replay USING btree (expires_at);


--
-- PostgreSQL database dump complete
--


