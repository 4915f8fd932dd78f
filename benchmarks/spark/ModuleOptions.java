/**
 * Prints the JVM options Spark's own launcher adds on this JDK (the --add-opens list), so that the
 * runner can start Spark programs with a plain {@code java -cp} command.
 */
public final class ModuleOptions {
    public static void main(String[] args) {
        System.out.println(org.apache.spark.launcher.JavaModuleOptions.defaultModuleOptions());
    }
}
