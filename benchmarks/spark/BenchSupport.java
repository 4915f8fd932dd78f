import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.spark.sql.SparkSession;

/**
 * Shared plumbing of the Spark benchmark programs: argument parsing, the Spark session, and the
 * machine-readable result line that the runner parses.
 *
 * <p>Every program accepts {@code --master M} (default {@code local[2]}) before or after its
 * positional arguments and prints exactly one line starting with {@code BENCH } (or one per trial
 * for the iterative workloads), made of {@code key=value} pairs.
 */
final class BenchSupport {
    private BenchSupport() {}

    /** Seconds from JVM start to now: call first thing in main to measure JVM startup. */
    static double jvmStartupSeconds() {
        long start = ManagementFactory.getRuntimeMXBean().getStartTime();
        return (System.currentTimeMillis() - start) / 1e3;
    }

    /** Parsed command line: positional arguments plus {@code --name value} options. */
    static final class Args {
        final List<String> positional = new ArrayList<>();
        final Map<String, String> options = new LinkedHashMap<>();
        /** Extra Spark settings, each given as {@code --conf key=value} (repeatable). */
        final Map<String, String> conf = new LinkedHashMap<>();

        Args(String[] argv) {
            for (int i = 0; i < argv.length; i++) {
                if (argv[i].startsWith("--")) {
                    if (i + 1 >= argv.length) {
                        throw new IllegalArgumentException("option " + argv[i] + " needs a value");
                    }
                    String name = argv[i].substring(2);
                    String value = argv[++i];
                    if (name.equals("conf")) {
                        int eq = value.indexOf('=');
                        if (eq <= 0) {
                            throw new IllegalArgumentException("--conf needs key=value, got " + value);
                        }
                        conf.put(value.substring(0, eq), value.substring(eq + 1));
                    } else {
                        options.put(name, value);
                    }
                } else {
                    positional.add(argv[i]);
                }
            }
        }

        String master() {
            return options.getOrDefault("master", "local[2]");
        }

        String get(int i, String what) {
            if (i >= positional.size()) {
                throw new IllegalArgumentException("missing argument " + (i + 1) + ": " + what);
            }
            return positional.get(i);
        }

        int getInt(int i, int dflt) {
            return i < positional.size() ? Integer.parseInt(positional.get(i)) : dflt;
        }
    }

    /**
     * Starts a Spark session. The driver heap is the JVM's own -Xmx (in local mode
     * spark.driver.memory cannot change a running JVM), so the runner passes it on the java command
     * line and we only record it in the configuration for the record.
     */
    static SparkSession session(String app, Args args) {
        SparkSession.Builder builder = SparkSession.builder()
                .appName(app)
                .master(args.master())
                .config("spark.ui.enabled", "false")
                // Local mode needs no network: keep the driver's RPC and block manager on loopback.
                .config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.driver.host", "127.0.0.1")
                .config("spark.driver.memory", Runtime.getRuntime().maxMemory() / (1 << 20) + "m");
        for (Map.Entry<String, String> kv : args.conf.entrySet()) {
            builder.config(kv.getKey(), kv.getValue());
        }
        SparkSession spark = builder.getOrCreate();
        spark.sparkContext().setLogLevel("WARN");
        return spark;
    }

    /** Prints the machine-readable result line. Values are printed with toString(). */
    static void report(String program, Object... keyValues) {
        StringBuilder sb = new StringBuilder("BENCH program=").append(program);
        for (int i = 0; i + 1 < keyValues.length; i += 2) {
            Object v = keyValues[i + 1];
            String s = v instanceof Double ? String.format("%.6f", (Double) v) : String.valueOf(v);
            sb.append(' ').append(keyValues[i]).append('=').append(s);
        }
        System.out.println(sb);
        System.out.flush();
    }

    static double secondsSince(long nanoStart) {
        return (System.nanoTime() - nanoStart) / 1e9;
    }

    /**
     * Unicode White_Space (the property Rust's {@code char::is_whitespace} uses). Every such code
     * point is in the BMP, so testing UTF-16 units is exact.
     */
    static boolean isUnicodeWhitespace(char c) {
        if (c <= ' ') {
            return c == ' ' || (c >= '\t' && c <= '\r');
        }
        if (c < 0x85) {
            return false;
        }
        switch (c) {
            case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
            case 0x3000:
                return true;
            default:
                return c >= 0x2000 && c <= 0x200A;
        }
    }
}
