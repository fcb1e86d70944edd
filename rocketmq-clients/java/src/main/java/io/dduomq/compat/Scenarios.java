package io.dduomq.compat;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.rocketmq.client.apis.ClientConfiguration;
import org.apache.rocketmq.client.apis.ClientConfigurationBuilder;
import org.apache.rocketmq.client.apis.ClientServiceProvider;
import org.apache.rocketmq.client.apis.StaticSessionCredentialsProvider;
import org.apache.rocketmq.client.apis.consumer.ConsumeResult;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.FilterExpressionType;
import org.apache.rocketmq.client.apis.consumer.PushConsumer;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.Message;
import org.apache.rocketmq.client.apis.message.MessageBuilder;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.apis.producer.Producer;
import org.apache.rocketmq.client.apis.producer.SendReceipt;
import org.apache.rocketmq.client.apis.producer.Transaction;
import org.apache.rocketmq.client.apis.producer.TransactionResolution;

/**
 * Runs the RocketMQ scenario matrix with the official Java client
 * (rocketmq-client-java, from Maven Central) against one endpoint.
 *
 * <p>It grades nothing itself: it prints one JSON line per message it sent,
 * received or acknowledged (scenario, message id, body as hex, and what the
 * scenario needs to check); the Rust test that starts the broker checks them.
 *
 * <p>Usage: Scenarios ENDPOINT RUN_ID SCENARIO... Topics and groups are named
 * SCENARIO-RUN_ID; the test creates them.
 */
public final class Scenarios {
    private static final Duration AWAIT = Duration.ofSeconds(2);
    private static final long DEADLINE_MS = 60_000;
    private static final ClientServiceProvider PROVIDER = ClientServiceProvider.loadService();

    private final ClientConfiguration config;

    private Scenarios(String endpoint) {
        // Plain text until the broker serves TLS (the client's default is TLS).
        // DDUOMQ_NAMESPACE: the namespace of the topics and groups (on
        // Kubernetes, that of their Topic and ConsumerGroup resources).
        // DDUOMQ_ACCESS_KEY and DDUOMQ_SECRET_KEY: the credentials every
        // request is signed with, when the broker has authentication on.
        ClientConfigurationBuilder builder = ClientConfiguration.newBuilder()
            .setEndpoints(endpoint)
            .enableSsl(false)
            .setNamespace(System.getenv().getOrDefault("DDUOMQ_NAMESPACE", ""));
        String accessKey = System.getenv("DDUOMQ_ACCESS_KEY");
        String secretKey = System.getenv("DDUOMQ_SECRET_KEY");
        if (accessKey != null && secretKey != null) {
            builder.setCredentialProvider(new StaticSessionCredentialsProvider(accessKey, secretKey));
        }
        this.config = builder.build();
    }

    public static void main(String[] args) {
        try {
            run(args);
        } catch (Throwable t) {
            // The client's threads would keep the JVM alive: exit, and say why.
            t.printStackTrace();
            System.exit(1);
        }
        System.exit(0);
    }

    private static void run(String[] args) throws Exception {
        Scenarios s = new Scenarios(args[0]);
        String run = args[1];
        for (int i = 2; i < args.length; i++) {
            String scenario = args[i];
            String name = scenario + "-" + run;
            switch (scenario) {
                case "normal" -> s.normal(name);
                case "fifo" -> s.fifo(name);
                case "delay" -> s.delay(name);
                case "transaction" -> s.transaction(name);
                case "redeliver" -> s.redeliver(name);
                case "filters" -> s.filters(name);
                case "push-dlq" -> s.pushDeadLetter(name);
                case "failover" -> s.failover(name);
                case "interop-send" -> s.interopSend(name);
                case "interop-receive" -> s.interopReceive(name);
                case "refused" -> s.refused(name);
                default -> throw new IllegalArgumentException("unknown scenario " + scenario);
            }
            emit(Map.of("event", "done", "scenario", scenario));
        }
    }

    // ---- output -------------------------------------------------------

    private static synchronized void emit(Map<String, Object> fields) {
        StringBuilder b = new StringBuilder("{");
        for (Map.Entry<String, Object> e : new TreeMap<>(fields).entrySet()) {
            if (b.length() > 1) {
                b.append(", ");
            }
            b.append(json(e.getKey())).append(": ").append(value(e.getValue()));
        }
        System.out.println(b.append('}'));
        System.out.flush();
    }

    private static String value(Object v) {
        if (v == null) {
            return "null";
        }
        if (v instanceof Number || v instanceof Boolean) {
            return v.toString();
        }
        if (v instanceof Map<?, ?> m) {
            StringBuilder b = new StringBuilder("{");
            for (Map.Entry<?, ?> e : new TreeMap<>(m).entrySet()) {
                if (b.length() > 1) {
                    b.append(", ");
                }
                b.append(json(e.getKey().toString())).append(": ").append(value(e.getValue()));
            }
            return b.append('}').toString();
        }
        if (v instanceof List<?> l) {
            List<String> items = new ArrayList<>();
            for (Object o : l) {
                items.add(value(o));
            }
            return "[" + String.join(", ", items) + "]";
        }
        return json(v.toString());
    }

    private static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }

    private static String hex(byte[] body) {
        return HexFormat.of().formatHex(body);
    }

    private static byte[] bytes(ByteBuffer buf) {
        ByteBuffer copy = buf.duplicate();
        byte[] out = new byte[copy.remaining()];
        copy.get(out);
        return out;
    }

    private static void sent(String scenario, SendReceipt r, byte[] body, Map<String, Object> extra) {
        Map<String, Object> line = new TreeMap<>(extra);
        line.put("event", "sent");
        line.put("scenario", scenario);
        line.put("id", r.getMessageId().toString());
        line.put("body", hex(body));
        emit(line);
    }

    private static void seen(String event, String scenario, MessageView m) {
        Map<String, Object> line = new TreeMap<>();
        line.put("event", event);
        line.put("scenario", scenario);
        line.put("id", m.getMessageId().toString());
        line.put("body", hex(bytes(m.getBody())));
        if (event.equals("received")) {
            line.put("tag", m.getTag().orElse(null));
            line.put("keys", new ArrayList<>(new java.util.TreeSet<>(m.getKeys())));
            line.put("properties", m.getProperties());
            line.put("group", m.getMessageGroup().orElse(null));
            line.put("attempt", m.getDeliveryAttempt());
            line.put("at_ms", System.currentTimeMillis());
        }
        emit(line);
    }

    // ---- clients ------------------------------------------------------

    private Producer producer(String topic) throws Exception {
        return PROVIDER.newProducerBuilder().setClientConfiguration(config).setTopics(topic).build();
    }

    private SimpleConsumer consumer(String group, String topic, FilterExpression filter) throws Exception {
        return PROVIDER.newSimpleConsumerBuilder()
            .setClientConfiguration(config)
            .setConsumerGroup(group)
            .setAwaitDuration(AWAIT)
            .setSubscriptionExpressions(Map.of(topic, filter))
            .build();
    }

    private static MessageBuilder message(String topic, byte[] body) {
        return PROVIDER.newMessageBuilder().setTopic(topic).setBody(body);
    }

    /** Receives until count messages came (or within ms passed), acking each if asked. */
    private static List<MessageView> receive(SimpleConsumer c, String scenario, int count, boolean ack, long within)
        throws Exception {
        List<MessageView> got = new ArrayList<>();
        long deadline = System.currentTimeMillis() + within;
        while (got.size() < count && System.currentTimeMillis() < deadline) {
            for (MessageView m : c.receive(32, Duration.ofSeconds(10))) {
                seen("received", scenario, m);
                if (ack) {
                    c.ack(m);
                    seen("acked", scenario, m);
                }
                got.add(m);
            }
        }
        return got;
    }

    // ---- scenarios ----------------------------------------------------

    private void normal(String name) throws Exception {
        try (Producer p = producer(name)) {
            for (int i = 0; i < 20; i++) {
                byte[] body = ("normal-" + i).repeat(i + 1).getBytes(StandardCharsets.UTF_8);
                Message m = message(name, body).setTag("TagA").setKeys("key-" + i)
                    .addProperty("n", Integer.toString(i)).build();
                sent("normal", p.send(m), body, Map.of("tag", "TagA"));
            }
        }
        try (SimpleConsumer c = consumer(name, name, FilterExpression.SUB_ALL)) {
            receive(c, "normal", 20, true, DEADLINE_MS);
        }
    }

    /** Sends one message, expecting the broker to refuse it (or the producer). */
    private void refused(String name) {
        try (Producer p = producer(name)) {
            SendReceipt r = p.send(message(name, "refused".getBytes(StandardCharsets.UTF_8)).build());
            emit(Map.of("event", "accepted", "scenario", "refused", "id", r.getMessageId().toString()));
        } catch (Throwable t) {
            StringBuilder why = new StringBuilder();
            for (Throwable c = t; c != null; c = c.getCause()) {
                why.append(c).append("; ");
            }
            emit(Map.of("event", "refused", "scenario", "refused", "error", why.toString()));
        }
    }

    private void fifo(String name) throws Exception {
        try (Producer p = producer(name)) {
            for (int i = 0; i < 5; i++) {
                for (String g : List.of("g1", "g2", "g3")) {
                    byte[] body = (g + "-" + i).getBytes(StandardCharsets.UTF_8);
                    Message m = message(name, body).setMessageGroup(g).build();
                    sent("fifo", p.send(m), body, Map.of("group", g, "seq", i));
                }
            }
        }
        try (SimpleConsumer c = consumer(name, name, FilterExpression.SUB_ALL)) {
            receive(c, "fifo", 15, true, DEADLINE_MS);
        }
    }

    private void delay(String name) throws Exception {
        long due = System.currentTimeMillis() + 3000;
        try (Producer p = producer(name)) {
            for (int i = 0; i < 3; i++) {
                byte[] body = ("delay-" + i).getBytes(StandardCharsets.UTF_8);
                Message m = message(name, body).setDeliveryTimestamp(due).build();
                sent("delay", p.send(m), body, Map.of("due_ms", due));
            }
        }
        try (SimpleConsumer c = consumer(name, name, FilterExpression.SUB_ALL)) {
            receive(c, "delay", 3, true, DEADLINE_MS);
        }
    }

    private void transaction(String name) throws Exception {
        CountDownLatch checked = new CountDownLatch(1);
        Producer p = PROVIDER.newProducerBuilder()
            .setClientConfiguration(config)
            .setTopics(name)
            .setTransactionChecker(m -> {
                seen("checked", "transaction", m);
                checked.countDown();
                return TransactionResolution.COMMIT;
            })
            .build();
        for (String outcome : List.of("commit", "rollback", "check")) {
            byte[] body = ("tx-" + outcome).getBytes(StandardCharsets.UTF_8);
            Transaction t = p.beginTransaction();
            sent("transaction", p.send(message(name, body).build(), t), body, Map.of("outcome", outcome));
            if (outcome.equals("commit")) {
                t.commit();
            } else if (outcome.equals("rollback")) {
                t.rollback();
            }
        }
        // The third stays open until the broker checks it back.
        checked.await(DEADLINE_MS, TimeUnit.MILLISECONDS);
        try (SimpleConsumer c = consumer(name, name, FilterExpression.SUB_ALL)) {
            receive(c, "transaction", 2, true, DEADLINE_MS);
            // Nothing else arrives: the rolled-back one never does.
            receive(c, "transaction", 1, true, 3000);
        }
        p.close();
    }

    private void redeliver(String name) throws Exception {
        byte[] body = "redeliver-me".getBytes(StandardCharsets.UTF_8);
        try (Producer p = producer(name)) {
            sent("redeliver", p.send(message(name, body).build()), body, Map.of());
        }
        try (SimpleConsumer c = consumer(name, name, FilterExpression.SUB_ALL)) {
            List<MessageView> first = receive(c, "redeliver", 1, false, DEADLINE_MS);
            if (!first.isEmpty()) {
                // Visible again in a second instead of the ten asked for at receive.
                c.changeInvisibleDuration(first.get(0), Duration.ofSeconds(1));
            }
            receive(c, "redeliver", 1, true, DEADLINE_MS);
        }
    }

    private void filters(String name) throws Exception {
        try (Producer p = producer(name)) {
            for (int i = 0; i < 6; i++) {
                String tag = i % 2 == 0 ? "TagA" : "TagB";
                byte[] body = ("filter-" + i).getBytes(StandardCharsets.UTF_8);
                Message m = message(name, body).setTag(tag).addProperty("n", Integer.toString(i)).build();
                sent("filters", p.send(m), body, Map.of("tag", tag, "n", i));
            }
        }
        try (SimpleConsumer c = consumer(name + "-tag", name, new FilterExpression("TagB", FilterExpressionType.TAG))) {
            receive(c, "filters-tag", 3, true, DEADLINE_MS);
        }
        try (SimpleConsumer c = consumer(name + "-sql", name, new FilterExpression("n > 3", FilterExpressionType.SQL92))) {
            receive(c, "filters-sql", 2, true, DEADLINE_MS);
        }
    }

    /**
     * Sends FAILOVER_MESSAGES messages, one every few milliseconds, printing
     * each acknowledged ("sent") or refused ("failed") one, while the cluster
     * test kills a master; then receives until every acknowledged one came.
     */
    private void failover(String name) throws Exception {
        int count = Integer.parseInt(System.getenv().getOrDefault("FAILOVER_MESSAGES", "3000"));
        java.util.Set<String> acked = new java.util.HashSet<>();
        try (Producer p = producer(name)) {
            for (int i = 0; i < count; i++) {
                byte[] body = ("failover-" + i).getBytes(StandardCharsets.UTF_8);
                try {
                    SendReceipt r = p.send(message(name, body).build());
                    acked.add(r.getMessageId().toString());
                    sent("failover", r, body, Map.of("n", i));
                } catch (org.apache.rocketmq.client.apis.ClientException e) {
                    String error = String.valueOf(e.getMessage());
                    emit(Map.of("event", "failed", "scenario", "failover", "n", i,
                        "error", error.substring(0, Math.min(300, error.length()))));
                }
                Thread.sleep(5);
            }
        }
        java.util.Set<String> received = new java.util.HashSet<>();
        long deadline = System.currentTimeMillis() + 180_000;
        try (SimpleConsumer c = consumer(name, name, FilterExpression.SUB_ALL)) {
            while (!received.containsAll(acked) && System.currentTimeMillis() < deadline) {
                try {
                    for (MessageView m : c.receive(32, Duration.ofSeconds(30))) {
                        seen("received", "failover", m);
                        c.ack(m);
                        received.add(m.getMessageId().toString());
                    }
                } catch (org.apache.rocketmq.client.apis.ClientException e) {
                    // A broker of the route restarting: receive again.
                    Thread.sleep(200);
                }
            }
        }
    }

    /** Sends for our SDK to receive. */
    private void interopSend(String name) throws Exception {
        try (Producer p = producer(name)) {
            for (int i = 0; i < 5; i++) {
                byte[] body = new byte[200];
                for (int j = 0; j < body.length; j++) {
                    body[j] = (byte) (i + j);
                }
                Message m = message(name, body).setTag("FromJava").setKeys("java-" + i)
                    .addProperty("lang", "java").build();
                sent("interop-send", p.send(m), body, Map.of());
            }
        }
    }

    /** Receives what our SDK sent (the test sent 5 first). */
    private void interopReceive(String name) throws Exception {
        try (SimpleConsumer c = consumer(name, name, FilterExpression.SUB_ALL)) {
            receive(c, "interop-receive", 5, true, DEADLINE_MS);
        }
    }

    /** A push consumer that fails one message every time: retried, then dead-lettered. */
    private void pushDeadLetter(String name) throws Exception {
        byte[] good = "push-ok".getBytes(StandardCharsets.UTF_8);
        byte[] bad = "push-fails".getBytes(StandardCharsets.UTF_8);
        try (Producer p = producer(name)) {
            sent("push-dlq", p.send(message(name, good).build()), good, Map.of("fails", false));
            sent("push-dlq", p.send(message(name, bad).build()), bad, Map.of("fails", true));
        }
        CountDownLatch done = new CountDownLatch(1);
        PushConsumer c = PROVIDER.newPushConsumerBuilder()
            .setClientConfiguration(config)
            .setConsumerGroup(name)
            .setSubscriptionExpressions(Map.of(name, FilterExpression.SUB_ALL))
            .setMessageListener(m -> {
                seen("received", "push-dlq", m);
                if (java.util.Arrays.equals(bytes(m.getBody()), bad)) {
                    if (m.getDeliveryAttempt() >= 3) {
                        done.countDown();
                    }
                    return ConsumeResult.FAILURE;
                }
                seen("acked", "push-dlq", m);
                return ConsumeResult.SUCCESS;
            })
            .build();
        done.await(DEADLINE_MS, TimeUnit.MILLISECONDS);
        // Time to forward it to the dead-letter queue after its last attempt.
        Thread.sleep(3000);
        c.close();
    }
}
