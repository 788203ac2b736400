// Types of the browser build copied here at build time (scripts/build_ui.ts).
import DOMPurify from 'dompurify';
export default DOMPurify;
