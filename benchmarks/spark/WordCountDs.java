import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.concat_ws;

import java.util.ArrayList;
import java.util.List;

import org.apache.spark.api.java.function.FlatMapFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.SparkSession;

/**
 * Word count with the typed Dataset API: read.textFile, a Java flatMap splitting on Unicode
 * whitespace, then the DataFrame groupBy().count() (hash aggregate on binary rows) and write.text.
 *
 * <p>Usage: {@code WordCountDs INPUT OUTPUT_DIR [--master local[2]]}
 */
public final class WordCountDs {
    public static void main(String[] argv) {
        double jvm = BenchSupport.jvmStartupSeconds();
        BenchSupport.Args args = new BenchSupport.Args(argv);
        String input = args.get(0, "INPUT");
        String output = args.get(1, "OUTPUT_DIR");

        long t0 = System.nanoTime();
        SparkSession spark = BenchSupport.session("WordCountDs", args);
        double session = BenchSupport.secondsSince(t0);

        long t1 = System.nanoTime();
        FlatMapFunction<String, String> split = line -> {
            List<String> out = new ArrayList<>(16);
            int n = line.length();
            int i = 0;
            while (i < n) {
                while (i < n && BenchSupport.isUnicodeWhitespace(line.charAt(i))) {
                    i++;
                }
                int start = i;
                while (i < n && !BenchSupport.isUnicodeWhitespace(line.charAt(i))) {
                    i++;
                }
                if (i > start) {
                    out.add(line.substring(start, i));
                }
            }
            return out.iterator();
        };
        Dataset<String> words = spark.read().textFile(input).flatMap(split, Encoders.STRING());
        words.groupBy("value").count()
                .select(concat_ws("\t", col("value"), col("count").cast("string")))
                .write().text(output);
        double job = BenchSupport.secondsSince(t1);

        BenchSupport.report("WordCountDs", "api", "dataset", "jvm_start_s", jvm, "session_start_s", session,
                "job_s", job);
        spark.stop();
    }
}
