import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.concat_ws;
import static org.apache.spark.sql.functions.explode;
import static org.apache.spark.sql.functions.split;

import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;

/**
 * Word count with DataFrame operations only (no user functions): read.text, split on the regex
 * {@code (?U)\s+} (Unicode White_Space), explode, drop the empty strings that leading whitespace
 * produces, groupBy().count(), write.text of {@code word<TAB>count} lines.
 *
 * <p>Usage: {@code WordCountDf INPUT OUTPUT_DIR [--master local[2]]}
 */
public final class WordCountDf {
    public static void main(String[] argv) {
        double jvm = BenchSupport.jvmStartupSeconds();
        BenchSupport.Args args = new BenchSupport.Args(argv);
        String input = args.get(0, "INPUT");
        String output = args.get(1, "OUTPUT_DIR");

        long t0 = System.nanoTime();
        SparkSession spark = BenchSupport.session("WordCountDf", args);
        double session = BenchSupport.secondsSince(t0);

        long t1 = System.nanoTime();
        Dataset<Row> words = spark.read().text(input)
                .select(explode(split(col("value"), "(?U)\\s+")).as("word"))
                .where(col("word").notEqual(""));
        words.groupBy("word").count()
                .select(concat_ws("\t", col("word"), col("count").cast("string")))
                .write().text(output);
        double job = BenchSupport.secondsSince(t1);

        BenchSupport.report("WordCountDf", "api", "dataframe", "jvm_start_s", jvm, "session_start_s", session,
                "job_s", job);
        spark.stop();
    }
}
