import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.substring_index;

import org.apache.spark.sql.SparkSession;

/**
 * Sort with DataFrame operations only: read.text, key = substring_index(line, TAB, 1),
 * orderBy(key) (Tungsten sort on binary rows; UTF-8 byte order, which is string order), write.text
 * of the original lines.
 *
 * <p>Usage: {@code SortDf INPUT OUTPUT_DIR [--master local[2]]}
 */
public final class SortDf {
    public static void main(String[] argv) {
        double jvm = BenchSupport.jvmStartupSeconds();
        BenchSupport.Args args = new BenchSupport.Args(argv);
        String input = args.get(0, "INPUT");
        String output = args.get(1, "OUTPUT_DIR");

        long t0 = System.nanoTime();
        SparkSession spark = BenchSupport.session("SortDf", args);
        double session = BenchSupport.secondsSince(t0);

        long t1 = System.nanoTime();
        spark.read().text(input)
                .withColumn("key", substring_index(col("value"), "\t", 1))
                .orderBy("key")
                .select("value")
                .write().text(output);
        double job = BenchSupport.secondsSince(t1);

        BenchSupport.report("SortDf", "api", "dataframe", "jvm_start_s", jvm, "session_start_s", session,
                "job_s", job);
        spark.stop();
    }
}
